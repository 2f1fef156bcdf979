"""Composition of the metering service: which messages it handles, and how.

A skeleton for now: it runs the shared runtime, provisions and watches its consumer
groups and reports readiness; its handlers come with the metering issue.
"""

from __future__ import annotations

from minicloud_shared.runtime import ServiceRuntime

SERVICE = "metering"


def build(runtime: ServiceRuntime) -> None:
    """Register the metering service's handlers on ``runtime``."""
