"""The scheduling service: workloads, the queue, quotas and placements — the wiring.

State lives in versioned records (hosts, workloads, quotas) written through the
runtime's transaction; the placement engine (``placement.Fleet``) is an in-memory
index of the same hosts, kept by ``fleetcache.FleetCache``. Every handler loads what
it needs, lets the pure policy decide (``queue.plan``: heads, backfill, preemption;
``queue.budget_stops``), and stages the decisions (``actions``). Before a placement is
staged, every chosen host's record is read through the transaction and compared with
the view; the commit checks those versions once more, atomically, so no GPU is ever
in two allocations, gangs are all or nothing, and quota records are never exceeded —
also with several replicas. If a commit is refused, the hosts it touched are marked
stale and reloaded before the next decision.

Where things are: ``store`` (keys, raw reads), ``state`` (records), ``queue`` (policy),
``placement`` (the fleet index), ``fairness`` (order and heads), ``actions`` (staged
changes), ``handlers`` (one per message type), ``queries`` (read-only questions).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import structlog

from minicloud_scheduling import handlers
from minicloud_scheduling.fleetcache import FleetCache
from minicloud_scheduling.metrics import SchedulingMetrics
from minicloud_scheduling.store import SERVICE
from minicloud_shared.contracts import Payload
from minicloud_shared.contracts.agent import TaskExited
from minicloud_shared.contracts.billing import BudgetExceeded, BudgetRestored
from minicloud_shared.contracts.inventory import (
    GpuFaultCleared,
    GpuFaulted,
    GpuModeSet,
    HostDecommissioned,
    HostDrained,
    HostReachable,
    HostRegistered,
    HostUndrained,
    HostUnreachable,
)
from minicloud_shared.contracts.scheduling import (
    SCHEDULING_HOSTLOG,
    CancelWorkload,
    CompleteWorkload,
    GrantReservation,
    SchedulingTick,
    SetQuota,
    SubmitWorkload,
)
from minicloud_shared.contracts.topology import SCHEDULING_EVENTS
from minicloud_shared.runtime import ServiceRuntime

__all__ = ["SERVICE", "SUBSCRIPTIONS", "build", "log"]

log = structlog.get_logger(service=SERVICE)  # lazy: resolved with the configuration in force

Handler = Callable[..., Awaitable[None]]  # (message, transaction, cache=FleetCache)

# What scheduling consumes, and the handler of each.
SUBSCRIPTIONS: list[tuple[type[Payload], Handler]] = [
    (SubmitWorkload, handlers.on_submit),
    (CompleteWorkload, handlers.on_complete),
    (CancelWorkload, handlers.on_cancel),
    (SetQuota, handlers.on_set_quota),
    (GrantReservation, handlers.on_grant_reservation),
    (HostRegistered, handlers.on_host_registered),
    (GpuModeSet, handlers.on_gpu_mode_set),
    (HostDrained, handlers.on_host_drained),
    (HostUndrained, handlers.on_host_undrained),
    (GpuFaulted, handlers.on_gpu_faulted),
    (GpuFaultCleared, handlers.on_gpu_fault_cleared),
    (HostDecommissioned, handlers.on_host_decommissioned),
    (HostUnreachable, handlers.on_host_unreachable),
    (HostReachable, handlers.on_host_reachable),
    (TaskExited, handlers.on_task_exited),
    (SchedulingTick, handlers.on_tick),
    (BudgetExceeded, handlers.on_budget_exceeded),
    (BudgetRestored, handlers.on_budget_restored),
]


def build(runtime: ServiceRuntime, cache: FleetCache | None = None) -> None:
    """Register the scheduling service's handlers on ``runtime``; ``cache``: the fleet
    view to use (one per process; tests pass their own to inspect it)."""
    settings = runtime.settings
    cache = cache or FleetCache(
        spot_notice_s=settings.spot_notice_s, backfill=settings.backfill, policy=settings.placement_policy
    )
    cache.metrics = SchedulingMetrics(runtime.metrics.registry)  # served with the runtime's
    runtime.metrics.refresh_with(cache.metrics.refresh)
    runtime.own_streams(SCHEDULING_EVENTS)
    # Replicas follow the host log by position and reload records from it; an hour of
    # it is plenty (a replica that falls further behind reloads everything at start).
    runtime.own_log(SCHEDULING_HOSTLOG, keep_s=3600)
    for payload_type, handler in SUBSCRIPTIONS:
        runtime.add_route(payload_type, partial(handler, cache=cache))
    runtime.every(runtime.settings.tick_s, lambda now: SchedulingTick(at=now))
