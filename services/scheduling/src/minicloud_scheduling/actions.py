"""Scheduling's staged changes: what a decision writes and emits, through the runtime's
transaction. Each function reads the records it changes (their versions are checked
at commit), updates them and emits the facts; none decides policy (``queue.py`` does)."""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta
from typing import Literal

import structlog

from minicloud_scheduling import store
from minicloud_scheduling.fleetcache import FleetCache
from minicloud_scheduling.placement import HostView, Placement
from minicloud_scheduling.queue import BACKFILL, Backfill, Pass, Place, Preempt, Wait, needs_releases, needs_spot, plan
from minicloud_scheduling.state import HostRecord, Quota, Workload, queue_score
from minicloud_shared.contracts import derived_event_id
from minicloud_shared.contracts.agent import StartTask, StopTask
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    AllocationReleased,
    GpuSlice,
    HostChanged,
    ReleaseReason,
    SpotNotice,
    WorkloadEnded,
    WorkloadQueued,
    WorkloadStarted,
)
from minicloud_shared.contracts.topology import tasks_stream
from minicloud_shared.runtime import Transaction

STOP_GRACE_S = 10  # SIGTERM, then SIGKILL this long after (Kubernetes gives 30 s, Slurm's KillWait 30 s)
RENDEZVOUS_PORTS = (29_400, 1_000)  # a gang's MASTER_PORT: first port, span (by allocation id)
QUEUE_WINDOW = 64  # queued workloads looked at per placement pass
PLAN_ATTEMPTS = 8  # passes re-planned after finding a chosen host changed

log = structlog.get_logger(service=store.SERVICE)


class DoubleAllocation(RuntimeError):
    """A placement would give a GPU that its host's record shows held: a bug upstream."""


async def put_host(tx: Transaction, cache: FleetCache, host: HostRecord) -> None:
    version = await tx.put(store.host_key(host.host_id), host)
    cache.fleet.upsert(host.view(version))
    tx.after_abort(lambda: cache.forget([host.host_id]))
    tx.emit(HostChanged(host_id=host.host_id, version=version), tenant_id=None)


async def pending(tx: Transaction, wl: Workload, code: str, reason: str) -> None:
    if (wl.pending_code, wl.pending_reason) == (code, reason):
        return  # no news: no event
    await tx.put(
        store.workload_key(wl.workload_id), wl.model_copy(update={"pending_code": code, "pending_reason": reason})
    )
    tx.emit(
        WorkloadQueued(workload_id=wl.workload_id, code=code, reason=reason),
        tenant_id=wl.tenant_id,
        correlation_id=wl.correlation_id,
    )


async def claim(
    tx: Transaction, cache: FleetCache, wl: Workload, p: Placement, hosts: list[HostRecord], now: datetime
) -> None:
    """Stage a placement: the GPUs, the quota, the workload running, the meter started."""
    allocation_id = "alloc-" + derived_event_id(wl.workload_id, "allocation", str(wl.allocations + 1))[:18]
    for i, host in enumerate(hosts):
        current = await store.load_host(tx, host.host_id) or host  # earlier placements of this pass included
        if not current.has_room(p, i):
            # Never reached while the view and the checks above hold; if they ever do
            # not, the batch fails (and is retried) rather than give a GPU twice.
            _, gpus = p.slices[i]
            held = sorted(current.allocations(set(gpus)))
            raise DoubleAllocation(
                f"{wl.workload_id}: GPUs {list(gpus)} (or the CPU and memory asked) of {host.host_id} are not free "
                f"in its record (held by {held})"
            )
        await put_host(tx, cache, current.holds(allocation_id, p, i))
    quota = await store.load_quota(tx, wl.tenant_id)
    await tx.put(
        store.quota_key(wl.tenant_id),
        quota.add(p.sku, p.region, p.gpus_touched, reserved=wl.price_class == "reserved"),
    )
    placed = wl.model_copy(
        update={
            "status": "running",
            "pending_code": "",
            "pending_reason": "",
            "allocation_id": allocation_id,
            "allocations": wl.allocations + 1,
            "placed_sku": p.sku,
            "placed_region": p.region,
            "slices": [(h, list(g)) for h, g in p.slices],
            "started_at": now,
            "exited": [],
            "exited_at": None,
        }
    )
    await tx.put(store.workload_key(wl.workload_id), placed)
    tx.zrem(store.QUEUE, wl.workload_id)
    tx.hset(store.ALLOCATIONS, allocation_id, wl.workload_id)
    tx.zadd(store.DEADLINES, wl.workload_id, now.timestamp() + wl.max_duration_s)
    # What reservations and preemption count on: whole GPUs only (a share frees no whole
    # GPU when it ends; CPU-only work holds none).
    whole = placed.slices if p.gpus else [(h, []) for h, _ in placed.slices]
    taken = list(p.resources)
    tx.hset(store.RUNNING, wl.workload_id, store.running_entry(now.timestamp() + wl.max_duration_s, whole, taken))
    if wl.price_class == "spot":
        tx.hset(store.SPOT, wl.workload_id, store.spot_entry(whole, taken))
    tx.emit(
        AllocationPlaced(
            allocation_id=allocation_id,
            workload_id=wl.workload_id,
            sku=p.sku,
            region=p.region,
            price_class=wl.price_class,
            gpus=[GpuSlice(host_id=h, gpu_indices=list(g)) for h, g in p.slices],
            gpu_count=p.gpus_touched,
            started_at=now,
            gpu_milli=p.gpu_milli or None,
            cpu_milli=p.resources[0][0] if p.resources else None,
            memory_mib=p.resources[0][1] if p.resources else None,
            mig_profile=p.mig_profile or None,
        ),
        tenant_id=wl.tenant_id,
        correlation_id=wl.correlation_id,
    )
    tx.emit(
        WorkloadStarted(workload_id=wl.workload_id, allocation_id=allocation_id, started_at=now),
        tenant_id=wl.tenant_id,
        correlation_id=wl.correlation_id,
    )
    if wl.run is not None:
        first = hosts[0]
        port = RENDEZVOUS_PORTS[0] + zlib.crc32(allocation_id.encode()) % RENDEZVOUS_PORTS[1]
        for rank, (host_id, gpus) in enumerate(p.slices):
            task = StartTask(
                allocation_id=allocation_id,
                workload_id=wl.workload_id,
                host_id=host_id,
                rank=rank,
                world_size=len(p.slices),
                gpu_indices=list(gpus),
                master_addr=first.address or first.host_id,
                master_port=port,
                run=wl.run,
                started_at=now,
                gpu_milli=p.gpu_milli or None,
                cpu_milli=p.resources[rank][0] if p.resources else None,
                memory_mib=p.resources[rank][1] if p.resources else None,
                mig_profile=p.mig_profile or None,
                mig_instance=p.mig_instance if p.mig_profile else None,
            )
            tx.emit(task, tenant_id=wl.tenant_id, correlation_id=wl.correlation_id, stream=tasks_stream(host_id))
    log.info(
        "placed",
        workload_id=wl.workload_id,
        allocation_id=allocation_id,
        level=p.level,
        gpus=p.gpus,
        tenant_id=wl.tenant_id,  # a placement made on a tick: the tick has no tenant or request
        correlation_id=wl.correlation_id or tx.message.envelope.correlation_id,
    )


async def give_notice(tx: Transaction, wl: Workload, victims: list[str], now: datetime, notice_s: int) -> str:
    """Give spot ``victims`` notice to make room for ``wl``; returns why ``wl`` waits."""
    stop_at = now + timedelta(seconds=notice_s)
    for vid in victims:
        victim = await store.load_workload(tx, vid)
        if victim is None or victim.status != "running" or victim.allocation_id is None:
            continue
        if victim.stop_at is not None:
            stop_at = max(stop_at, victim.stop_at) if victim.stop_at > now else stop_at
            continue  # already under notice
        await tx.put(
            store.workload_key(vid), victim.model_copy(update={"stop_at": stop_at, "preempted_for": wl.workload_id})
        )
        tx.zadd(store.PREEMPTIONS, vid, stop_at.timestamp())
        stop_tasks(tx, victim, "spot_notice", stop_at)  # SIGTERM now; the notice is the grace period
        tx.emit(
            SpotNotice(
                workload_id=vid,
                allocation_id=victim.allocation_id,
                notice_at=now,
                stop_at=stop_at,
                reason=f"capacity for {wl.price_class} work {wl.workload_id}",
            ),
            tenant_id=victim.tenant_id,
            correlation_id=victim.correlation_id,
        )
    return f"spot work is being stopped to make room; it starts when that work stops, by {stop_at.isoformat()}"


async def _fresh(tx: Transaction, cache: FleetCache, p: Placement) -> list[HostRecord] | None:
    """The chosen hosts' records, if the view ``p`` was chosen from is still true; else
    None, with the view corrected from the records."""
    hosts: list[HostRecord] = []
    stale = False
    for i, (host_id, _) in enumerate(p.slices):
        host = await store.load_host(tx, host_id)
        version = tx.version(store.host_key(host_id))
        view = cache.fleet.hosts[host_id]
        # Compare what the view says, not only its version number: a view can carry a
        # version this replica staged in a refused batch, while another replica
        # committed different content under the same number (ABA). And what was chosen
        # must be free in the record itself, whatever the view says.
        if host is None or version != view.version or not _same(host.view(version), view) or not host.has_room(p, i):
            stale = True
            if host is None:
                cache.fleet.remove(host_id)
            else:
                cache.fleet.upsert(host.view(version))
        else:
            hosts.append(host)
    return None if stale else hosts


def _same(a: HostView, b: HostView) -> bool:
    """Whether two views of a host say the same about what it has free."""
    return (a.free, a.partial, a.schedulable, a.cpu_free, a.memory_free, a.shared, a.mig, a.mig_free) == (
        b.free,
        b.partial,
        b.schedulable,
        b.cpu_free,
        b.memory_free,
        b.shared,
        b.mig,
        b.mig_free,
    )


async def decide(tx: Transaction, cache: FleetCache, p: Pass, places_only: bool = False) -> None:
    """Plan a pass, check the chosen hosts against their records (re-planning while the
    view was stale), and stage the decisions in order."""
    for attempt in range(PLAN_ATTEMPTS):
        decisions = plan(cache.fleet, p)
        if needs_spot(p, decisions):
            # Read only when it could matter: a pass with nothing waiting for capacity
            # makes no preemption decision.
            p.spot = await store.spot_held(tx)
            decisions = plan(cache.fleet, p)
        if needs_releases(p, decisions):
            # Likewise: when running work ends matters only to work placed behind a
            # workload that waits for capacity (its reservation).
            p.releases = await store.releases(tx)
            decisions = plan(cache.fleet, p)
        checked: dict[str, list[HostRecord] | None] = {}
        for d in decisions:
            if isinstance(d, Place):
                checked[d.workload.workload_id] = await _fresh(tx, cache, d.placement)
        if all(h is not None for h in checked.values()) or attempt == PLAN_ATTEMPTS - 1:
            break
    placed: list[float] = []
    waiting: list[tuple[Workload, str]] = []
    for d in decisions:
        if isinstance(d, Place):
            hosts = checked[d.workload.workload_id]
            if hosts is not None:
                await claim(tx, cache, d.workload, d.placement, hosts, p.now)
                placed.append((p.now - d.workload.submitted_at).total_seconds())
            elif not places_only:
                waiting.append((d.workload, "capacity"))
                await pending(
                    tx, d.workload, "capacity", "the fleet changed while placing; trying again at the next change"
                )
        elif places_only:
            continue
        elif isinstance(d, Wait):
            await pending(tx, d.workload, d.code, d.reason)
            waiting.append((d.workload, d.code))
        elif isinstance(d, Preempt):
            await pending(
                tx, d.workload, "preempting", await give_notice(tx, d.workload, d.victims, p.now, cache.spot_notice_s)
            )
            waiting.append((d.workload, "preempting"))
    _measure(tx, cache, placed, None if places_only else waiting, p.now)


def _measure(
    tx: Transaction, cache: FleetCache, placed: list[float], waiting: list[tuple[Workload, str]] | None, now: datetime
) -> None:
    """The pass's figures, once its commit lands (``cache.metrics``): a pass run again
    after a refused commit is counted once."""
    m = cache.metrics

    def landed() -> None:
        for seconds in placed:
            m.submit_to_placed.observe(max(0.0, seconds))
        if waiting is not None:
            m.record_pass(cache.fleet, waiting, now)

    tx.after_commit(landed)


async def load_pass(
    tx: Transaction, now: datetime, scores: dict[str, float], preempt: bool = True, backfill: Backfill = BACKFILL
) -> Pass:
    """Read what a pass decides from: the queued workloads among ``scores`` (others
    leave the queue), their tenants' quotas and budget blocks, the spot work running."""
    await tx.prefetch([store.workload_key(w) for w in scores])
    waiting: list[Workload] = []
    for wid in scores:
        wl = await store.load_workload(tx, wid)
        if wl is None:
            continue
        if wl.status != "queued":
            tx.zrem(store.QUEUE, wid)
            continue
        waiting.append(wl)
    tenants = sorted({w.tenant_id for w in waiting})
    await tx.prefetch([k for t in tenants for k in (store.quota_key(t), store.budget_key(t))])
    quotas: dict[str, Quota] = {t: await store.load_quota(tx, t) for t in tenants}
    blocks = {t: b for t in tenants if (b := await store.budget_block(tx, t)) is not None}
    return Pass(now, waiting, scores, quotas, blocks, None, preempt, backfill=backfill)


async def schedule(tx: Transaction, cache: FleetCache, now: datetime, also: tuple[Workload, ...] = ()) -> None:
    """One placement pass over the head of the queue. ``also``: workloads queued by
    this very message (staged, not yet in the queue's index)."""
    scores = await store.queue_window(tx, QUEUE_WINDOW)
    scores.update({w.workload_id: queue_score(w.priority, w.submitted_at, w.price_class) for w in also})
    if scores:
        await decide(tx, cache, await load_pass(tx, now, scores, backfill=cache.backfill))
    else:
        _measure(tx, cache, [], [], now)  # nothing waits: the queue's figures say so


async def place_first(tx: Transaction, cache: FleetCache, workload_ids: list[str], now: datetime) -> None:
    """Place these workloads now if they fit (before anything else in the queue)."""
    for wid in workload_ids:
        wl = await store.load_workload(tx, wid)
        if wl is not None and wl.status == "queued":
            score = queue_score(wl.priority, wl.submitted_at, wl.price_class)
            await decide(tx, cache, await load_pass(tx, now, {wid: score}, preempt=False), places_only=True)


def stop_tasks(tx: Transaction, wl: Workload, reason: str, kill_at: datetime) -> None:
    """Tell the agents running ``wl``'s allocation to stop it: SIGTERM now, SIGKILL at ``kill_at``."""
    if wl.run is None or wl.allocation_id is None:
        return
    for rank, (host_id, _) in enumerate(wl.slices):
        stop = StopTask(
            allocation_id=wl.allocation_id,
            workload_id=wl.workload_id,
            host_id=host_id,
            rank=rank,
            reason=reason,
            kill_at=kill_at,
        )
        tx.emit(stop, tenant_id=wl.tenant_id, correlation_id=wl.correlation_id, stream=tasks_stream(host_id))


async def release(tx: Transaction, cache: FleetCache, wl: Workload, reason: ReleaseReason, now: datetime) -> Workload:
    """End a running workload's allocation (GPUs back, quota back, meter stops)."""
    assert wl.allocation_id is not None
    stop_tasks(tx, wl, reason, max(now, tx.now) + timedelta(seconds=STOP_GRACE_S))
    for host_id, _ in wl.slices:
        host = await store.load_host(tx, host_id)
        if host is not None:
            await put_host(tx, cache, host.without(wl.allocation_id))
    tx.hdel(store.ALLOCATIONS, wl.allocation_id)
    tx.zrem(store.DEADLINES, wl.workload_id)
    tx.hdel(store.RUNNING, wl.workload_id)
    tx.hdel(store.SPOT, wl.workload_id)
    tx.zrem(store.PREEMPTIONS, wl.workload_id)
    quota = await store.load_quota(tx, wl.tenant_id)
    if wl.placed_sku and wl.placed_region:
        reserved = wl.price_class == "reserved"
        await tx.put(
            store.quota_key(wl.tenant_id),
            # What its claim counted: the GPUs of its slices, whole or in part (Placement.gpus_touched).
            quota.add(wl.placed_sku, wl.placed_region, -sum(len(g) for _, g in wl.slices), reserved=reserved),
        )
    tx.emit(
        AllocationReleased(
            allocation_id=wl.allocation_id,
            workload_id=wl.workload_id,
            reason=reason,
            gpus=[GpuSlice(host_id=h, gpu_indices=g) for h, g in wl.slices],
            released_at=now,
        ),
        tenant_id=wl.tenant_id,
        correlation_id=wl.correlation_id,
    )
    return wl.model_copy(update={"allocation_id": None, "slices": [], "placed_sku": None, "placed_region": None})


async def stop(
    tx: Transaction,
    cache: FleetCache,
    wl: Workload,
    reason: ReleaseReason,
    outcome: Literal["completed", "cancelled", "failed"],
    why: str,
    at: datetime,
    exit_code: int | None = None,
    host_id: str | None = None,
) -> None:
    """End a running workload for good: its allocation released at ``at``."""
    stopped = await release(tx, cache, wl, reason, at)
    await tx.put(store.workload_key(wl.workload_id), stopped.model_copy(update={"status": outcome}))
    ended = WorkloadEnded(
        workload_id=wl.workload_id, outcome=outcome, reason=why, ended_at=at, exit_code=exit_code, host_id=host_id
    )
    tx.emit(ended, tenant_id=wl.tenant_id, correlation_id=wl.correlation_id)


async def requeue(
    tx: Transaction,
    cache: FleetCache,
    wl: Workload,
    reason: ReleaseReason,
    why: str,
    now: datetime,
    code: str = "requeued",
) -> Workload:
    released = await release(tx, cache, wl, reason, now)
    queued = released.model_copy(update={"status": "queued", "pending_code": code, "pending_reason": why})
    await tx.put(store.workload_key(wl.workload_id), queued)
    tx.zadd(store.QUEUE, wl.workload_id, queue_score(wl.priority, wl.submitted_at, wl.price_class))  # keeps its place
    tx.emit(
        WorkloadQueued(workload_id=wl.workload_id, code=code, reason=why),
        tenant_id=wl.tenant_id,
        correlation_id=wl.correlation_id,
    )
    metrics = cache.metrics
    tx.after_commit(lambda: metrics.requeues.labels(reason).inc())  # once, when the commit lands
    return queued


async def stop_preempted(tx: Transaction, cache: FleetCache, now: datetime) -> tuple[list[Workload], list[str]]:
    """Stop spot work whose notice has run out, at the instant it ran out; requeue it.
    Returns the requeued workloads and the workloads they made room for."""
    requeued: list[Workload] = []
    beneficiaries: list[str] = []
    for vid in await store.due(tx, store.PREEMPTIONS, now.timestamp()):
        victim = await store.load_workload(tx, vid)
        if victim is None or victim.status != "running" or victim.stop_at is None:
            tx.zrem(store.PREEMPTIONS, vid)
            continue
        if victim.preempted_for and victim.preempted_for not in beneficiaries:
            beneficiaries.append(victim.preempted_for)
        why = f"preempted for {victim.preempted_for} after its notice; waiting to run again"
        queued = await requeue(tx, cache, victim, "preempted", why, victim.stop_at, code="preempted")
        requeued.append(queued.model_copy(update={"stop_at": None, "preempted_for": None}))
        await tx.put(store.workload_key(vid), requeued[-1])
    return requeued, beneficiaries


async def workloads_on(tx: Transaction, host: HostRecord, indices: set[int] | None = None) -> list[Workload]:
    """The workloads holding GPUs (whole or shared), CPU or memory of ``host`` (those on
    the GPUs ``indices``, if given)."""
    ids = host.allocations(indices)
    out = []
    for wid in await store.workloads_of_allocations(tx, ids):
        wl = await store.load_workload(tx, wid)
        if wl is not None:
            out.append(wl)
    return out
