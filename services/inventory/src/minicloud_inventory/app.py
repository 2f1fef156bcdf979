"""The inventory service — the wiring. Its rules are pure (``domain.py``), its
handlers translate (``handlers.py``: load the host record, apply the rule, store the
new record, count the GPUs' states, emit the fact or the refusal), its keys are in
``store.py``, and ``capacity.py`` answers questions about the counts."""

from __future__ import annotations

from functools import partial

from minicloud_inventory import handlers
from minicloud_inventory.metrics import InventoryMetrics
from minicloud_inventory.store import SERVICE
from minicloud_shared.contracts import Payload
from minicloud_shared.contracts.agent import HostHeartbeat
from minicloud_shared.contracts.inventory import (
    ClearGpuFault,
    DecommissionHost,
    DrainHost,
    InventoryTick,
    RegisterHost,
    ReportGpuFault,
    SetGpuMode,
    UndrainHost,
)
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased
from minicloud_shared.contracts.topology import INVENTORY_EVENTS
from minicloud_shared.runtime import Handler, ServiceRuntime

__all__ = ["SERVICE", "SUBSCRIPTIONS", "build"]

# What inventory consumes, and the handler of each.
SUBSCRIPTIONS: list[tuple[type[Payload], Handler]] = [
    (RegisterHost, handlers.on_register_host),
    (DrainHost, handlers.on_drain_host),
    (SetGpuMode, handlers.on_set_gpu_mode),
    (UndrainHost, handlers.on_undrain_host),
    (DecommissionHost, handlers.on_decommission_host),
    (ReportGpuFault, handlers.on_report_gpu_fault),
    (ClearGpuFault, handlers.on_clear_gpu_fault),
    (AllocationPlaced, handlers.on_allocation_placed),
    (AllocationReleased, handlers.on_allocation_released),
    (HostHeartbeat, handlers.on_heartbeat),
]


def build(runtime: ServiceRuntime) -> None:
    """Register the inventory service's handlers on ``runtime``."""
    for payload_type, handler in SUBSCRIPTIONS:
        runtime.add_route(payload_type, handler)
    runtime.add_route(InventoryTick, partial(handlers.on_tick, silence_s=runtime.settings.host_silence_s))
    runtime.every(runtime.settings.tick_s, lambda now: InventoryTick(at=now))
    runtime.own_streams(INVENTORY_EVENTS)
    runtime.metrics.refresh_with(InventoryMetrics(runtime.metrics.registry).refresh)
