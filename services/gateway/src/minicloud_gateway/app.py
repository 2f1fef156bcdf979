"""Composition of the gateway: its projections (consumers of the services' events) and,
in ``__main__``, the public HTTP API served beside them in one process."""

from __future__ import annotations

from minicloud_gateway.projections import build_projections
from minicloud_shared.runtime import ServiceRuntime

SERVICE = "gateway"


def build(runtime: ServiceRuntime) -> None:
    """Register the gateway's projection handlers on ``runtime``."""
    build_projections(runtime)
