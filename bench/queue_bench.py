"""Backfill by reservation, measured on a queue simulation (issue: GPU sharing, "The
queue"). The decision core itself (``queue.plan`` on a ``placement.Fleet``) is driven
by a discrete-event simulation, in process, with no Redis: each policy sees the same
arrivals, sizes and run times.

- **Pool**: 64 hosts x 8 H100 (512 GPUs) in one region, NVLink domains of 2 hosts.
- **Work** (``MIX``): 1 GPU 35%, 2 GPUs 10%, 4 GPUs 15%, 8 GPUs 20%, gangs of 2, 4
  and 8 nodes x 8 GPUs 10%, 7% and 3%; each declares a maximum duration (small work
  1-8 h, single nodes 2-24 h, gangs 12-72 h) and runs 30-100% of it, as users who
  over-ask do. Poisson arrivals offering ``LOAD`` of the pool's GPU-hours.
- **Passes** every 5 simulated minutes over the first ``QUEUE_WINDOW`` workloads by
  queue order, as scheduling's tick does; one tenant, one band (FIFO), so the order
  is the queue's and not fair share's.
- **Policies**: ``window`` — the rule before this change, reproduced here as the
  baseline (a blocked head lets at most 8 smaller workloads pass per pass, and none
  once it has waited 10 minutes); ``easy`` and ``conservative`` — ``queue.plan``'s.

Reported per policy: mean utilization, waiting hours (a workload waiting at a pass,
times 5 minutes) and the share of them in which the pool had as many free GPUs as the
workload needs, p50/p90 wait, and how many workloads started later than the first
reservation they were given (must be 0: backfill by reservation never delays one).
"""

from __future__ import annotations

import heapq
import random
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from bench.common import Result, with_ratio
from minicloud_scheduling.actions import QUEUE_WINDOW
from minicloud_scheduling.fairness import fair_order
from minicloud_scheduling.placement import Fleet, HostView, NoPlacement, Placement, Request
from minicloud_scheduling.queue import Backfill, Pass, Place, Release, Wait, plan
from minicloud_scheduling.state import Quota, Workload, queue_score

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SKU = "h100-80gb-sxm"
HOSTS = 64
TICK = timedelta(minutes=5)
LOAD = 0.95
# (GPUs per node, nodes, share, max duration range in hours)
MIX = [
    (1, 1, 0.35, (1, 8)),
    (2, 1, 0.10, (2, 24)),
    (4, 1, 0.15, (2, 24)),
    (8, 1, 0.20, (2, 24)),
    (8, 2, 0.10, (12, 72)),
    (8, 4, 0.07, (12, 72)),
    (8, 8, 0.03, (12, 72)),
]


@dataclass
class Job:
    wl: Workload
    runtime: timedelta
    started: datetime | None = None
    first_hold: datetime | None = None


@dataclass
class Outcome:
    policy: str
    utilization: float
    waiting_hours: float
    waiting_hours_with_free: float
    waiting_hours_placeable: float  # ... and a placement for it existed (held back by policy, not fragmentation)
    wait_p50_h: float
    wait_p90_h: float
    late_heads: int
    held: int  # workloads that were given a reservation
    seconds: float

    @property
    def share_with_free(self) -> float:
        return self.waiting_hours_with_free / self.waiting_hours if self.waiting_hours else 0.0

    @property
    def share_placeable(self) -> float:
        return self.waiting_hours_placeable / self.waiting_hours if self.waiting_hours else 0.0


def pool() -> Fleet:
    f = Fleet()
    for i in range(HOSTS):
        f.upsert(HostView(f"h{i}", SKU, "eu-1", "a", f"r{i // 16}", f"nvl{i // 2}", 8, set(range(8))))
    return f


def arrivals(days: float, seed: int) -> list[Job]:
    rng = random.Random(seed)
    shares = [m[2] for m in MIX]
    mean_gpu_h = sum(s * g * n * (lo + hi) / 2 * 0.65 for (g, n, s, (lo, hi)) in MIX)
    per_hour = LOAD * HOSTS * 8 / mean_gpu_h
    jobs: list[Job] = []
    at = T0
    end = T0 + timedelta(days=days)
    i = 0
    while at < end:
        at += timedelta(hours=rng.expovariate(per_hour))
        g, n, _, (lo, hi) = rng.choices(MIX, weights=shares)[0]
        max_h = rng.uniform(lo, hi)
        wl = Workload(
            workload_id=f"w{i:06d}",
            tenant_id="t",
            name=f"w{i}",
            kind="training",
            sku=SKU,
            gpus_per_node=g,
            nodes=n,
            region="eu-1",
            price_class="on_demand",
            priority=100,
            max_duration_s=int(max_h * 3600),
            client_command_id=str(i),
            submitted_at=at,
        )
        jobs.append(Job(wl, timedelta(hours=max_h * rng.uniform(0.3, 1.0))))
        i += 1
    return jobs


def window_plan(fleet: Fleet, waiting: list[Workload], scores: dict[str, float], now: datetime) -> list[Any]:
    """The rule before backfill by reservation (the baseline): a blocked head lets at
    most 8 smaller workloads pass per pass, and none once it has waited 10 minutes."""
    out: list[Any] = []
    head: Workload | None = None
    passed = 0
    claimed: list[Placement] = []
    try:
        for wl in fair_order(waiting, scores, {}):
            if head is not None and (
                passed >= 8 or (now - head.submitted_at).total_seconds() > 600 or wl.gpus >= head.gpus
            ):
                out.append(Wait(wl, "priority", ""))
                continue
            found = fleet.find(Request(wl.gpus_per_node, wl.nodes, wl.sku, wl.region))
            if isinstance(found, NoPlacement):
                out.append(Wait(wl, found.code, found.reason))
                head = head or wl
                continue
            fleet.claim(found)
            claimed.append(found)
            out.append(Place(wl, found))
            passed += head is not None
    finally:
        for p in claimed:
            for host_id, gpus in p.slices:
                fleet.release(host_id, gpus)
    return out


def simulate(policy: str, days: float, seed: int, warmup_days: float = 2.0) -> Outcome:
    started_clock = time.perf_counter()
    fleet = pool()
    jobs = arrivals(days, seed)
    by_id = {j.wl.workload_id: j for j in jobs}
    pending = list(jobs)  # by submission
    queued: list[Job] = []
    running: list[tuple[datetime, str, Placement]] = []  # heap by actual end
    deadlines: dict[str, Release] = {}
    now = T0
    end = T0 + timedelta(days=days)
    measure_from = T0 + timedelta(days=warmup_days)
    capacity = HOSTS * 8
    busy_gpu_ticks = ticks = 0
    waiting_ticks = waiting_free_ticks = placeable_ticks = 0
    late = held = 0
    while now < end:
        while running and running[0][0] <= now:
            _, wid, placement = heapq.heappop(running)
            for host_id, gpus in placement.slices:
                fleet.release(host_id, gpus)
            deadlines.pop(wid)
        while pending and pending[0].wl.submitted_at <= now:
            queued.append(pending.pop(0))
        scores = {j.wl.workload_id: queue_score(100, j.wl.submitted_at) for j in queued}
        window = sorted(queued, key=lambda j: scores[j.wl.workload_id])[:QUEUE_WINDOW]
        waiting = [j.wl for j in window]
        if policy == "window":
            decisions = window_plan(fleet, waiting, scores, now)
        else:
            backfill = cast(Backfill, policy)
            p = Pass(now, waiting, scores, {"t": Quota()}, releases=list(deadlines.values()), backfill=backfill)
            decisions = plan(fleet, p)
            for hold in p.holds:
                job = by_id[hold.workload.workload_id]
                if job.first_hold is None and hold.at is not None:
                    job.first_hold = hold.at
                    held += 1
        for d in decisions:
            if isinstance(d, Place):
                job = by_id[d.workload.workload_id]
                fleet.claim(d.placement)
                job.started = now
                queued.remove(job)
                heapq.heappush(running, (now + job.runtime, job.wl.workload_id, d.placement))
                deadlines[job.wl.workload_id] = Release(
                    now + timedelta(seconds=job.wl.max_duration_s), d.placement.slices
                )
                if job.first_hold is not None and now > job.first_hold + TICK:
                    late += 1
        if now >= measure_from:
            free = fleet.free_gpus(SKU)
            ticks += 1
            busy_gpu_ticks += capacity - free
            fits: dict[tuple[int, int], bool] = {}
            for j in queued:
                if j.wl.submitted_at <= now:
                    waiting_ticks += 1
                    if free >= j.wl.gpus:
                        waiting_free_ticks += 1
                        shape = (j.wl.gpus_per_node, j.wl.nodes)
                        if shape not in fits:
                            fits[shape] = isinstance(fleet.find(Request(*shape, SKU, "eu-1")), Placement)
                        placeable_ticks += fits[shape]
        now += TICK
    waits = [
        (j.started - j.wl.submitted_at).total_seconds() / 3600
        for j in jobs
        if j.started is not None and j.wl.submitted_at >= measure_from
    ]
    hours = TICK.total_seconds() / 3600
    q = statistics.quantiles(waits, n=10) if len(waits) > 10 else [0.0] * 9
    return Outcome(
        policy,
        utilization=busy_gpu_ticks / (ticks * capacity) if ticks else 0.0,
        waiting_hours=waiting_ticks * hours,
        waiting_hours_with_free=waiting_free_ticks * hours,
        waiting_hours_placeable=placeable_ticks * hours,
        wait_p50_h=statistics.median(waits) if waits else 0.0,
        wait_p90_h=q[8],
        late_heads=late,
        held=held,
        seconds=time.perf_counter() - started_clock,
    )


def run(url: str = "", repeats: int = 3, **kwargs: object) -> list[Result]:
    """Each policy on the same ``repeats`` simulated months (three weeks each; a quick
    run: one week); medians over the seeds."""
    days = 7.0 if kwargs.get("n") == 10_000 else 21.0  # --quick passes n=10_000
    seeds = range(min(repeats, 3))
    results: list[Result] = []
    outcomes: dict[str, list[Outcome]] = {}
    utilization: dict[str, Result] = {}
    for policy in ("window", "easy", "conservative"):
        outcomes[policy] = [simulate(policy, days, seed) for seed in seeds]
        o = outcomes[policy]
        med = {
            k: statistics.median(getattr(x, k) for x in o)
            for k in (
                "utilization",
                "share_with_free",
                "share_placeable",
                "wait_p50_h",
                "wait_p90_h",
                "waiting_hours",
                "seconds",
            )
        }
        late = sum(x.late_heads for x in o)
        print(
            f"  {policy:>12}: utilization {med['utilization']:.1%}, waiting {med['waiting_hours']:,.0f} h of which "
            f"{med['share_with_free']:.0%} with enough free GPUs ({med['share_placeable']:.0%} with a placement "
            f"free: held back by the policy, not fragmentation), wait p50/p90 {med['wait_p50_h']:.1f}/"
            f"{med['wait_p90_h']:.1f} h, started after their first reservation: {late} of "
            f"{sum(x.held for x in o)} ({med['seconds']:.0f} s a run)"
        )
        figures = (
            ("utilization", round(med["utilization"], 4), "fraction", ""),
            (
                "waiting_with_free_share",
                round(med["share_with_free"], 4),
                "fraction",
                "waiting hours in which the pool had as many free GPUs as the workload needs (goal < 0.10)",
            ),
            (
                "waiting_placeable_share",
                round(med["share_placeable"], 4),
                "fraction",
                "waiting hours in which a placement for the workload was free: held back by the policy",
            ),
            ("wait_p90_h", round(med["wait_p90_h"], 2), "hours", ""),
            ("started_after_first_reservation", late, "workloads", "" if policy == "window" else "goal 0"),
        )
        for name, value, unit, note in figures:
            results.append(Result(f"queue.{policy}.{name}", value, unit, note=note))
        utilization[policy] = results[-len(figures)]
    for policy in ("easy", "conservative"):
        ratio = Result(f"queue.{policy}.utilization_vs_window", utilization[policy].value, "fraction")
        results.append(with_ratio(ratio, utilization["window"]))
    return results


if __name__ == "__main__":
    run()
