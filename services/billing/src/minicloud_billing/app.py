"""Composition of the billing service: which messages it handles, and how.

A skeleton for now: it runs the shared runtime, provisions and watches its consumer
groups and reports readiness; its handlers come with the billing issue.
"""

from __future__ import annotations

from minicloud_shared.runtime import ServiceRuntime

SERVICE = "billing"


def build(runtime: ServiceRuntime) -> None:
    """Register the billing service's handlers on ``runtime``."""
