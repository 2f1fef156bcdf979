"""Scheduling's own Prometheus metrics, beside the runtime's (served by the same
``/metrics``; docs/operations.md).

The queue's figures come from the last placement pass, which looks at the head of the
queue (``actions.QUEUE_WINDOW`` workloads) and decides for each whether it is placed or
why it waits. They are set when the pass commits. Labels are bounded: the SKU a
workload asks for (``any`` when it accepts any), and the wait's reason code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as Counted
from redis.asyncio import Redis

from minicloud_scheduling.placement import Fleet
from minicloud_scheduling.state import Workload
from minicloud_scheduling.store import QUEUE

ROOM_CODES = ("capacity", "topology")  # waits for GPUs (not quota, budget or a reservation)
_WAITS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class SchedulingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.queue_depth = Gauge("minicloud_scheduling_queue_depth", "Workloads in the queue", registry=r)
        self.waiting = Gauge(
            "minicloud_scheduling_waiting",
            "Workloads at the head of the queue waiting after the last pass, by SKU asked for and reason",
            ["sku", "reason"],
            registry=r,
        )
        self.oldest_wait = Gauge(
            "minicloud_scheduling_oldest_wait_seconds",
            "How long the longest-waiting workload at the head of the queue has waited, by SKU asked for",
            ["sku"],
            registry=r,
        )
        self.waiting_with_room = Gauge(
            "minicloud_scheduling_waiting_with_free_gpus",
            "Workloads waiting for capacity although their pool has as many free GPUs in total",
            ["sku"],
            registry=r,
        )
        self.free_gpus = Gauge(
            "minicloud_scheduling_free_gpus", "Free GPUs on schedulable hosts, by SKU", ["sku"], registry=r
        )
        self.submit_to_placed = Histogram(
            "minicloud_scheduling_submit_to_placed_seconds",
            "From a workload's submission to its placement (the cloud's clock)",
            buckets=_WAITS,
            registry=r,
        )
        self.requeues = Counted(
            "minicloud_scheduling_requeues",
            "Running workloads put back in the queue, by why: preempted (spot), gpu_fault, drain, host_lost",
            ["reason"],
            registry=r,
        )

    async def refresh(self, redis: Redis) -> None:
        """At scrape time: the queue's length (the passes see only its head)."""
        self.queue_depth.set(int(await redis.zcard(QUEUE)))

    def record_pass(self, fleet: Fleet, waiting: Sequence[tuple[Workload, str]], now: datetime) -> None:
        """The head of the queue after a pass: who waits, why, for how long, and
        whether their pool has the GPUs in total (fragmentation, or a policy, holds
        them back)."""
        skus = fleet.skus()
        free = {sku: fleet.free_gpus(sku) for sku in skus}
        for sku in skus:
            self.free_gpus.labels(sku).set(free[sku])
        counts: Counter[tuple[str, str]] = Counter()
        oldest: dict[str, float] = {}
        room: Counter[str] = Counter()
        for wl, code in waiting:
            pool = wl.sku or ("+".join(wl.skus) if wl.skus else "any")
            counts[(pool, code)] += 1
            oldest[pool] = max(oldest.get(pool, 0.0), (now - wl.submitted_at).total_seconds())
            accepted = wl.accepts
            available = max((n for sku, n in free.items() if accepted is None or sku in accepted), default=0)
            if code in ROOM_CODES and available >= wl.gpus:
                room[pool] += 1
        for gauge in (self.waiting, self.oldest_wait, self.waiting_with_room):
            gauge.clear()  # a pool nothing waits in any more shows nothing, not its last figure
        for (pool, code), n in counts.items():
            self.waiting.labels(pool, code).set(n)
        for pool, seconds in oldest.items():
            self.oldest_wait.labels(pool).set(seconds)
            self.waiting_with_room.labels(pool).set(room[pool])
