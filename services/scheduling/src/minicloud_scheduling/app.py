"""The scheduling service: workloads, the queue, quotas and placements.

State lives in versioned records (hosts, workloads, quotas) written through the
runtime's transaction; the placement engine (``placement.Fleet``) is an in-memory
index of the same hosts, used to choose quickly. Before a placement is staged, every
chosen host's record is read through the transaction and its version compared with
the engine's: a host another replica (or a refused batch) changed is refreshed and the
choice made again. The commit then checks those versions once more, atomically, so
no GPU is ever in two allocations, gangs are all or nothing, and quota records are
never exceeded — also with several replicas. If a commit is refused, the hosts it
touched are marked stale and reloaded before the next decision.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog

from minicloud_scheduling.fairness import can_head, competes, fair_order
from minicloud_scheduling.placement import Fleet, HostView, NoPlacement, Placement, Request
from minicloud_scheduling.state import (
    HOSTS,
    QUEUE,
    HostRecord,
    Quota,
    Reservation,
    Workload,
    budget_key,
    host_key,
    queue_score,
    quota_key,
    workload_key,
)
from minicloud_shared.contracts import Message, decode, derived_event_id, text
from minicloud_shared.contracts.billing import BudgetExceeded, BudgetRestored
from minicloud_shared.contracts.inventory import (
    GpuFaultCleared,
    GpuFaulted,
    HostDecommissioned,
    HostDrained,
    HostRegistered,
    HostUndrained,
)
from minicloud_shared.contracts.scheduling import (
    SCHEDULING_HOSTLOG,
    AllocationPlaced,
    AllocationReleased,
    CancelWorkload,
    CompleteWorkload,
    GpuSlice,
    GrantReservation,
    HostChanged,
    QuotaSet,
    ReleaseReason,
    ReservationGranted,
    SchedulingTick,
    SetQuota,
    SpotNotice,
    SubmitWorkload,
    WorkloadAccepted,
    WorkloadEnded,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadStarted,
)
from minicloud_shared.contracts.topology import SCHEDULING_EVENTS
from minicloud_shared.runtime import ServiceRuntime, Transaction
from minicloud_shared.skus import skus

SERVICE = "scheduling"
ALLOCATIONS = "mc:scheduling:allocations"  # allocation id -> workload id
DEADLINES = "mc:scheduling:deadlines"  # running workload id -> when its maximum duration ends (epoch s)
SPOT = "mc:scheduling:spot"  # running spot workload id -> its GPUs, JSON [[host, [indices]], ...]
PREEMPTIONS = "mc:scheduling:preemptions"  # spot workload id under notice -> when it stops (epoch s)
BUDGET_STOPPED = ("spot", "dev")  # what a tenant at its hard limit loses at once (price class or kind)
SPOT_NOTICE_S = 30  # like GCP's 30 s; AWS gives 2 minutes
QUEUE_WINDOW = 64  # queued workloads looked at per placement pass
BACKFILL_LIMIT = 8  # smaller workloads placed past a blocked head per pass
BACKFILL_WINDOW_S = 600  # once the head has waited this long, nothing jumps it

log = structlog.get_logger(service=SERVICE)  # lazy: resolved with the configuration in force


def _entry_after(entry_id: bytes | str, position: str) -> bool:
    """Whether stream entry ``entry_id`` comes after the one after ``position``."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = eid.partition("-")
    pms, _, pseq = position.partition("-")
    return (int(ms), int(seq)) > (int(pms), int(pseq) + 1)


class Scheduler:
    """Handlers and the engine they share within one process."""

    def __init__(self) -> None:
        self.fleet = Fleet()
        self.loaded = False
        self.stale: set[str] = set()
        self.log_position = "0-0"  # how far this replica has followed the host log

    # --- keeping the engine true -------------------------------------------------------

    async def sync(self, tx: Transaction) -> None:
        """Load the fleet on first use; reload hosts whose state we may have mis-assumed."""
        if self.loaded and self.log_position != "0-0":
            first: Any = await tx.redis.xrange(SCHEDULING_HOSTLOG, count=1)
            if first and _entry_after(first[0][0], self.log_position):
                # Entries we never read were trimmed: we may have missed changes.
                log.info("host log trimmed past this replica's position; reloading the fleet")
                self.loaded = False
        if not self.loaded:
            # Follow the log from where it is now, then load everything: a change
            # between the two is seen twice, never missed.
            last: Any = await tx.redis.xrevrange(SCHEDULING_HOSTLOG, count=1)
            self.log_position = last[0][0].decode() if last else "0-0"
            ids = [i.decode() if isinstance(i, bytes) else i for i in await tx.redis.smembers(HOSTS)]
            self.stale.update(ids)
            self.loaded = True
        else:
            changes: Any = await tx.redis.xread({SCHEDULING_HOSTLOG: self.log_position}, count=10_000)
            for _, entries in changes:
                for entry_id, fields in entries:
                    self.log_position = entry_id.decode()
                    change = decode(fields).payload
                    assert isinstance(change, HostChanged)
                    known = self.fleet.hosts.get(change.host_id)
                    if known is None or known.version != change.version:
                        self.stale.add(change.host_id)
        if not self.stale:
            return
        hosts, self.stale = sorted(self.stale), set()
        pipe = tx.redis.pipeline(transaction=False)
        for h in hosts:
            pipe.hmget(host_key(h), ["v", "d"])
        for host_id, (version, data) in zip(hosts, await pipe.execute(), strict=True):
            if data is None:
                self.fleet.remove(host_id)
            else:
                self.fleet.upsert(HostRecord.model_validate(json.loads(data)).view(int(version)))

    def forget(self, host_ids: list[str]) -> None:
        self.stale.update(host_ids)

    async def _host(self, tx: Transaction, host_id: str) -> HostRecord | None:
        doc = await tx.get(host_key(host_id))
        return None if doc is None else HostRecord.model_validate(doc)

    async def _put_host(self, tx: Transaction, host: HostRecord) -> None:
        version = await tx.put(host_key(host.host_id), host)
        self.fleet.upsert(host.view(version))
        tx.after_abort(lambda: self.forget([host.host_id]))
        tx.emit(HostChanged(host_id=host.host_id, version=version), tenant_id=None)

    # --- placement ----------------------------------------------------------------------

    async def try_place(self, tx: Transaction, wl: Workload, now: datetime) -> NoPlacement | None:
        if wl.price_class == "reserved":
            beyond = await self._beyond_reservation(tx, wl, now)
            if beyond is not None:
                return beyond
        request = Request(wl.gpus_per_node, wl.nodes, wl.sku, wl.region)
        for _ in range(8):
            found = self.fleet.find(request)
            if isinstance(found, NoPlacement):
                return found
            stale = False
            hosts: list[HostRecord] = []
            for host_id in found.host_ids:
                host = await self._host(tx, host_id)
                version = tx.version(host_key(host_id))
                view = self.fleet.hosts[host_id]
                # The record read here is the truth the commit will check. Compare what
                # the view says, not only its version number: a view can carry a version
                # this replica staged in a batch that was then refused, while another
                # replica committed different content under the same number (ABA).
                if (
                    host is None
                    or version != view.version
                    or host.free() != view.free
                    or host.schedulable != view.schedulable
                ):
                    stale = True
                    if host is None:
                        self.fleet.remove(host_id)
                    else:
                        self.fleet.upsert(host.view(version))
                elif host is not None:
                    hosts.append(host)
            if stale:
                continue
            budget = await tx.get(budget_key(wl.tenant_id))
            if budget is not None and budget["blocked"]:
                return NoPlacement("budget", f"the tenant's budget is exhausted: {budget['reason']}")
            quota = Quota.model_validate(await tx.get(quota_key(wl.tenant_id)) or {})
            blocked = quota.blocking(found.sku, found.region, found.gpus)
            if blocked is not None:
                key, held, limit = blocked
                sku, region = key.split("|")
                return NoPlacement(
                    "quota",
                    f"over quota: the tenant holds {held} of its {limit} GPUs "
                    f"({'any SKU' if sku == '*' else sku} in {'any region' if region == '*' else region}) "
                    f"and this needs {found.gpus} more",
                )
            await self._claim(tx, wl, found, hosts, quota, now)
            return None
        return NoPlacement("capacity", "the fleet changed while placing; trying again at the next change")

    async def _beyond_reservation(self, tx: Transaction, wl: Workload, now: datetime) -> NoPlacement | None:
        """Reserved work runs within its tenant's reservations in force (their GPUs, their
        term) or waits: the reserved price and queue rank apply to nothing else."""
        if wl.sku is None or wl.region is None:
            return NoPlacement("reservation", "reserved work must name the SKU and region of its reservation")
        quota = Quota.model_validate(await tx.get(quota_key(wl.tenant_id)) or {})
        reserved, in_use = quota.reserved_room(wl.sku, wl.region, now)
        if in_use + wl.gpus <= reserved:
            return None
        where = f"{wl.sku} in {wl.region}"
        if not reserved:
            why = f"no reservation of {where} is in force for this tenant"
        else:
            why = f"its reservations of {where} hold {in_use} of {reserved} GPUs; this needs {wl.gpus}"
        return NoPlacement("reservation", f"waiting for reserved capacity: {why}")

    async def _claim(
        self, tx: Transaction, wl: Workload, p: Placement, hosts: list[HostRecord], quota: Quota, now: datetime
    ) -> None:
        allocation_id = "alloc-" + derived_event_id(wl.workload_id, "allocation", str(wl.allocations + 1))[:18]
        for host, (_, gpus) in zip(hosts, p.slices, strict=True):
            await self._put_host(
                tx, host.model_copy(update={"allocated": {**host.allocated, **dict.fromkeys(gpus, allocation_id)}})
            )
        reserved = wl.price_class == "reserved"
        await tx.put(quota_key(wl.tenant_id), quota.add(p.sku, p.region, p.gpus, reserved=reserved))
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
            }
        )
        await tx.put(workload_key(wl.workload_id), placed)
        tx.zrem(QUEUE, wl.workload_id)
        tx.hset(ALLOCATIONS, allocation_id, wl.workload_id)
        tx.zadd(DEADLINES, wl.workload_id, now.timestamp() + wl.max_duration_s)
        if wl.price_class == "spot":
            tx.hset(SPOT, wl.workload_id, json.dumps([[h, list(g)] for h, g in p.slices]))
        tx.emit(
            AllocationPlaced(
                allocation_id=allocation_id,
                workload_id=wl.workload_id,
                sku=p.sku,
                region=p.region,
                price_class=wl.price_class,
                gpus=[GpuSlice(host_id=h, gpu_indices=list(g)) for h, g in p.slices],
                gpu_count=p.gpus,
                started_at=now,
            ),
            tenant_id=wl.tenant_id,
        )
        tx.emit(
            WorkloadStarted(workload_id=wl.workload_id, allocation_id=allocation_id, started_at=now),
            tenant_id=wl.tenant_id,
        )
        log.info("placed", workload_id=wl.workload_id, allocation_id=allocation_id, level=p.level, gpus=p.gpus)

    async def schedule(self, tx: Transaction, now: datetime, also: tuple[Workload, ...] = ()) -> None:
        """One placement pass over the head of the queue, with bounded backfill.

        ``also``: workloads queued by this very message (staged, not yet in Redis).
        """
        rows: list[Any] = await tx.redis.zrange(QUEUE, 0, QUEUE_WINDOW - 1, withscores=True)
        queue: dict[str, float] = {(text(r)): float(sc) for r, sc in rows}
        queue.update({w.workload_id: queue_score(w.priority, w.submitted_at, w.price_class) for w in also})
        waiting: list[Workload] = []
        for wid in queue:
            doc = await tx.get(workload_key(wid))
            if doc is None:
                continue
            wl = Workload.model_validate(doc)
            if wl.status != "queued":
                tx.zrem(QUEUE, wid)
                continue
            waiting.append(wl)
        held: dict[str, int] = {}
        for tenant in sorted({w.tenant_id for w in waiting}):
            held[tenant] = sum(Quota.model_validate(await tx.get(quota_key(tenant)) or {}).used.values())
        # Heads: workloads waiting for capacity or topology, each holding back only what
        # competes for the same GPUs (fairness.competes) — a gang waiting for H200s in
        # one region stops neither an A100 job nor an H200 job in another region.
        heads: list[Workload] = []
        backfilled: dict[str, int] = {}
        preempting = False  # one preemption decision per pass
        for wl in fair_order(waiting, queue, held):
            competing = [h for h in heads if competes(h, wl)]
            head = min(competing, key=lambda h: queue[h.workload_id]) if competing else None
            if head is not None:
                # The head waits: smaller work may go past it, a few at a time, and only
                # while the head has not waited too long.
                waited = (now - head.submitted_at).total_seconds()
                used = backfilled.get(head.workload_id, 0)
                if used >= BACKFILL_LIMIT or waited > BACKFILL_WINDOW_S or wl.gpus >= head.gpus:
                    # Another tenant's workload is never named to this one.
                    ahead = head.workload_id if head.tenant_id == wl.tenant_id else "another tenant's workload"
                    await self._pending(tx, wl, "priority", f"waiting behind {ahead}, queued before it")
                    continue
            why = await self.try_place(tx, wl, now)
            if why is None:
                if head is not None:
                    backfilled[head.workload_id] = backfilled.get(head.workload_id, 0) + 1
                continue
            if why.code in ("capacity", "topology") and wl.price_class != "spot" and not preempting:
                notice = await self.preempt_for(tx, wl, now)
                if notice is not None:
                    preempting = True
                    why = notice
            await self._pending(tx, wl, why.code, why.reason)
            if can_head(why.code) and not any(h.sku == wl.sku and h.region == wl.region for h in heads):
                # Waiting for capacity or topology makes it the head of its pool, which
                # others must not overtake for long; what waits for its tenant's quota or
                # budget, or for GPUs the fleet does not have, holds up nobody.
                heads.append(wl)

    async def preempt_for(self, tx: Transaction, wl: Workload, now: datetime) -> NoPlacement | None:
        """If stopping spot work would make room for ``wl``, give those spot workloads
        notice and return the reason ``wl`` now waits; None if spot work would not help."""
        raw: Any = await tx.redis.hgetall(SPOT)
        held: dict[str, list[tuple[str, list[int]]]] = {
            (k.decode() if isinstance(k, bytes) else k): [(h, g) for h, g in json.loads(v)] for k, v in raw.items()
        }
        if not held:
            return None
        # What if the spot GPUs were free? Widen the views, ask, put them back (no await
        # in between: nothing else sees the widened views).
        widened: dict[str, set[int]] = {}
        for slices in held.values():
            for host_id, indices in slices:
                if host_id in self.fleet.hosts:
                    widened.setdefault(host_id, set()).update(indices)
        originals = {h: self.fleet.hosts[h] for h in widened}
        for host_id, extra in widened.items():
            o = originals[host_id]
            self.fleet.upsert(
                HostView(
                    o.host_id,
                    o.sku,
                    o.region,
                    o.zone,
                    o.rack,
                    o.domain,
                    o.gpu_count,
                    o.free | extra,
                    o.schedulable,
                    o.version,
                )
            )
        try:
            found = self.fleet.find(Request(wl.gpus_per_node, wl.nodes, wl.sku, wl.region))
        finally:
            for view in originals.values():
                self.fleet.upsert(view)
        if isinstance(found, NoPlacement):
            return None
        wanted = {(h, g) for h, gpus in found.slices for g in gpus}
        victims = sorted(w for w, slices in held.items() if any((h, g) in wanted for h, gs in slices for g in gs))
        stop_at = now + timedelta(seconds=SPOT_NOTICE_S)
        for vid in victims:
            doc = await tx.get(workload_key(vid))
            if doc is None:
                continue
            victim = Workload.model_validate(doc)
            if victim.status != "running" or victim.allocation_id is None:
                continue
            if victim.stop_at is not None:
                stop_at = max(stop_at, victim.stop_at) if victim.stop_at > now else stop_at
                continue  # already under notice
            await tx.put(
                workload_key(vid), victim.model_copy(update={"stop_at": stop_at, "preempted_for": wl.workload_id})
            )
            tx.zadd(PREEMPTIONS, vid, stop_at.timestamp())
            tx.emit(
                SpotNotice(
                    workload_id=vid,
                    allocation_id=victim.allocation_id,
                    notice_at=now,
                    stop_at=stop_at,
                    reason=f"capacity for {wl.price_class} work {wl.workload_id}",
                ),
                tenant_id=victim.tenant_id,
            )
        return NoPlacement(
            "preempting",
            f"spot work is being stopped to make room; it starts when that work stops, by {stop_at.isoformat()}",
        )

    async def stop_preempted(self, tx: Transaction, now: datetime) -> tuple[list[Workload], list[str]]:
        """Stop spot work whose notice has run out, at the instant it ran out; requeue it.
        Returns the requeued workloads and the workloads they made room for."""
        due: Any = await tx.redis.zrangebyscore(PREEMPTIONS, "-inf", now.timestamp(), start=0, num=256)
        requeued: list[Workload] = []
        beneficiaries: list[str] = []
        for raw in due:
            vid = text(raw)
            doc = await tx.get(workload_key(vid))
            victim = None if doc is None else Workload.model_validate(doc)
            if victim is None or victim.status != "running" or victim.stop_at is None:
                tx.zrem(PREEMPTIONS, vid)
                continue
            if victim.preempted_for and victim.preempted_for not in beneficiaries:
                beneficiaries.append(victim.preempted_for)
            why = f"preempted for {victim.preempted_for} after a {SPOT_NOTICE_S} s notice; waiting to run again"
            queued = await self.requeue(tx, victim, "preempted", why, victim.stop_at, code="preempted")
            requeued.append(queued.model_copy(update={"stop_at": None, "preempted_for": None}))
            await tx.put(workload_key(vid), requeued[-1])
        return requeued, beneficiaries

    async def _pending(self, tx: Transaction, wl: Workload, code: str, reason: str) -> None:
        if (wl.pending_code, wl.pending_reason) == (code, reason):
            return  # no news: no event
        await tx.put(
            workload_key(wl.workload_id), wl.model_copy(update={"pending_code": code, "pending_reason": reason})
        )
        tx.emit(WorkloadQueued(workload_id=wl.workload_id, code=code, reason=reason), tenant_id=wl.tenant_id)

    async def release(self, tx: Transaction, wl: Workload, reason: ReleaseReason, now: datetime) -> Workload:
        """End a running workload's allocation (GPUs back, quota back, meter stops)."""
        assert wl.allocation_id is not None
        for host_id, _ in wl.slices:
            host = await self._host(tx, host_id)
            if host is not None:
                allocated = {i: a for i, a in host.allocated.items() if a != wl.allocation_id}
                await self._put_host(tx, host.model_copy(update={"allocated": allocated}))
        tx.hdel(ALLOCATIONS, wl.allocation_id)
        tx.zrem(DEADLINES, wl.workload_id)
        tx.hdel(SPOT, wl.workload_id)
        tx.zrem(PREEMPTIONS, wl.workload_id)
        quota = Quota.model_validate(await tx.get(quota_key(wl.tenant_id)) or {})
        if wl.placed_sku and wl.placed_region:
            reserved = wl.price_class == "reserved"
            await tx.put(
                quota_key(wl.tenant_id), quota.add(wl.placed_sku, wl.placed_region, -wl.gpus, reserved=reserved)
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
        )
        return wl.model_copy(update={"allocation_id": None, "slices": [], "placed_sku": None, "placed_region": None})

    async def stop(
        self,
        tx: Transaction,
        wl: Workload,
        reason: ReleaseReason,
        outcome: Literal["completed", "cancelled", "failed"],
        why: str,
        at: datetime,
    ) -> None:
        """End a running workload for good: its allocation released at ``at``."""
        stopped = await self.release(tx, wl, reason, at)
        await tx.put(workload_key(wl.workload_id), stopped.model_copy(update={"status": outcome}))
        tx.emit(
            WorkloadEnded(workload_id=wl.workload_id, outcome=outcome, reason=why, ended_at=at), tenant_id=wl.tenant_id
        )

    async def requeue(
        self, tx: Transaction, wl: Workload, reason: ReleaseReason, why: str, now: datetime, code: str = "requeued"
    ) -> Workload:
        released = await self.release(tx, wl, reason, now)
        queued = released.model_copy(update={"status": "queued", "pending_code": code, "pending_reason": why})
        await tx.put(workload_key(wl.workload_id), queued)
        tx.zadd(QUEUE, wl.workload_id, queue_score(wl.priority, wl.submitted_at, wl.price_class))  # keeps its place
        tx.emit(WorkloadQueued(workload_id=wl.workload_id, code=code, reason=why), tenant_id=wl.tenant_id)
        return queued

    async def workloads_on(self, tx: Transaction, host: HostRecord, indices: set[int] | None = None) -> list[Workload]:
        ids = {a for i, a in host.allocated.items() if indices is None or i in indices}
        out = []
        for wid in await self._workloads_of_allocations(tx, ids):
            doc = await tx.get(workload_key(wid))
            if doc is not None:
                out.append(Workload.model_validate(doc))
        return out

    async def _workloads_of_allocations(self, tx: Transaction, allocation_ids: set[str]) -> list[str]:
        if not allocation_ids:
            return []
        found = await tx.redis.hmget(ALLOCATIONS, sorted(allocation_ids))
        return sorted({w.decode() if isinstance(w, bytes) else w for w in found if w is not None})


def build(runtime: ServiceRuntime, scheduler: Scheduler | None = None) -> None:
    """Register the scheduling service's handlers on ``runtime``."""
    s = scheduler or Scheduler()
    runtime.own_streams(SCHEDULING_EVENTS)
    # Replicas follow the host log by position and reload records from it; an hour of
    # it is plenty (a replica that falls further behind reloads everything at start).
    runtime.own_log(SCHEDULING_HOSTLOG, keep_s=3600)

    def reject(tx: Transaction, msg: Message[Any], workload_id: str, code: str, reason: str) -> None:
        tx.emit(WorkloadRejected(workload_id=workload_id, code=code, reason=reason), tenant_id=msg.envelope.tenant_id)

    async def on_submit(msg: Message[SubmitWorkload], tx: Transaction) -> None:
        await s.sync(tx)
        c, tenant = msg.payload, msg.envelope.tenant_id
        if tenant is None:
            reject(tx, msg, c.workload_id, "conflict", "a workload needs a tenant")
            return
        existing = await tx.get(workload_key(c.workload_id))
        if existing is not None:
            if not Workload.model_validate(existing).same_request(c, tenant):
                reject(tx, msg, c.workload_id, "conflict", "this id names another workload (idempotency key reused)")
            return  # the same submission again: already answered
        budget = await tx.get(budget_key(tenant))
        if budget is not None and budget["blocked"]:
            reject(tx, msg, c.workload_id, "budget", f"no new work is admitted: {budget['reason']}")
            return
        if c.sku is not None and c.sku not in skus():
            reject(tx, msg, c.workload_id, "no_such_capacity", f"unknown GPU SKU {c.sku!r}")
            return
        why = s.fleet.find(Request(c.gpus_per_node, c.nodes, c.sku, c.region))
        if isinstance(why, NoPlacement) and why.code == "too_large":
            reject(tx, msg, c.workload_id, "too_large", why.reason)
            return
        now = msg.envelope.occurred_at
        wl = Workload(
            workload_id=c.workload_id,
            tenant_id=tenant,
            name=c.name,
            kind=c.kind,
            sku=c.sku,
            gpus_per_node=c.gpus_per_node,
            nodes=c.nodes,
            region=c.region,
            price_class=c.price_class,
            priority=c.priority,
            max_duration_s=c.max_duration_s,
            client_command_id=c.client_command_id,
            submitted_at=now,
        )
        await tx.put(workload_key(c.workload_id), wl)
        tx.zadd(QUEUE, c.workload_id, queue_score(c.priority, now, c.price_class))
        tx.hset(f"mc:scheduling:tenant:{tenant}:workloads", c.workload_id, c.client_command_id)
        tx.emit(
            WorkloadAccepted(
                workload_id=c.workload_id,
                name=c.name,
                kind=c.kind,
                sku=c.sku,
                gpus_per_node=c.gpus_per_node,
                nodes=c.nodes,
                region=c.region,
                price_class=c.price_class,
                priority=c.priority,
                max_duration_s=c.max_duration_s,
            )
        )
        await s.schedule(tx, now, also=(wl,))

    async def end(msg: Message[Any], workload_id: str, outcome: str, reason: str, tx: Transaction) -> None:
        await s.sync(tx)
        doc = await tx.get(workload_key(workload_id))
        wl = None if doc is None else Workload.model_validate(doc)
        if wl is None or wl.tenant_id != msg.envelope.tenant_id:
            reject(tx, msg, workload_id, "unknown_workload", f"no workload {workload_id}")
            return
        if wl.status in ("completed", "cancelled", "failed"):
            return  # already over: asking again changes nothing
        now = msg.envelope.occurred_at
        if wl.status == "queued":
            if outcome == "completed":
                reject(
                    tx, msg, workload_id, "not_running", f"workload {workload_id} has not started; cancel it instead"
                )
                return
            tx.zrem(QUEUE, workload_id)
        else:
            wl = await s.release(tx, wl, "completed" if outcome == "completed" else "cancelled", now)
        await tx.put(workload_key(workload_id), wl.model_copy(update={"status": outcome}))
        tx.emit(WorkloadEnded(workload_id=workload_id, outcome=outcome, reason=reason, ended_at=now))  # type: ignore[arg-type]
        await s.schedule(tx, now)

    async def on_complete(msg: Message[CompleteWorkload], tx: Transaction) -> None:
        await end(msg, msg.payload.workload_id, "completed", "completed by the tenant", tx)

    async def on_cancel(msg: Message[CancelWorkload], tx: Transaction) -> None:
        await end(msg, msg.payload.workload_id, "cancelled", msg.payload.reason, tx)

    async def on_set_quota(msg: Message[SetQuota], tx: Transaction) -> None:
        tenant = msg.envelope.tenant_id
        if tenant is None:
            return
        c = msg.payload
        quota = Quota.model_validate(await tx.get(quota_key(tenant)) or {})
        await tx.put(
            quota_key(tenant), quota.model_copy(update={"limits": {**quota.limits, f"{c.sku}|{c.region}": c.gpus}})
        )
        tx.emit(QuotaSet(sku=c.sku, region=c.region, gpus=c.gpus))
        await s.sync(tx)
        await s.schedule(tx, msg.envelope.occurred_at)

    async def on_grant_reservation(msg: Message[GrantReservation], tx: Transaction) -> None:
        tenant = msg.envelope.tenant_id
        if tenant is None:
            return
        c = msg.payload
        quota = Quota.model_validate(await tx.get(quota_key(tenant)) or {})
        granted = Reservation(sku=c.sku, region=c.region, gpus=c.gpus, starts_at=c.starts_at, ends_at=c.ends_at)
        reservations = {**quota.reservations, c.reservation_id: granted}
        await tx.put(quota_key(tenant), quota.model_copy(update={"reservations": reservations}))
        tx.emit(ReservationGranted(reservation_id=c.reservation_id, **granted.model_dump()), tenant_id=tenant)
        await s.sync(tx)
        await s.schedule(tx, msg.envelope.occurred_at)

    # --- inventory's facts --------------------------------------------------------------

    async def fresh_host(tx: Transaction, host_id: str, generation: int) -> HostRecord | None:
        await s.sync(tx)
        host = await s._host(tx, host_id)
        if host is None or host.inventory_generation >= generation:
            return None  # unknown, or a fact older than what we know
        return host

    async def on_host_registered(msg: Message[HostRegistered], tx: Transaction) -> None:
        e = msg.payload
        await s.sync(tx)
        if await s._host(tx, e.host_id) is not None:
            return
        host = HostRecord(
            host_id=e.host_id,
            sku=e.sku,
            region=e.region,
            zone=e.zone,
            rack=e.rack,
            nvlink_domain=e.nvlink_domain,
            gpu_count=len(e.gpu_ids),
            inventory_generation=e.generation,
        )
        await s._put_host(tx, host)
        tx.sadd(HOSTS, e.host_id)
        await s.schedule(tx, msg.envelope.occurred_at)

    async def on_host_drained(msg: Message[HostDrained], tx: Transaction) -> None:
        e = msg.payload
        host = await fresh_host(tx, e.host_id, e.generation)
        if host is None:
            return
        host = host.model_copy(update={"schedulable": False, "inventory_generation": e.generation})
        await s._put_host(tx, host)
        now = msg.envelope.occurred_at
        why = f"host {e.host_id} is being drained ({e.reason}); waiting to be placed again"
        requeued = [await s.requeue(tx, wl, "drain", why, now) for wl in await s.workloads_on(tx, host)]
        await s.schedule(tx, now, also=tuple(requeued))

    async def on_host_undrained(msg: Message[HostUndrained], tx: Transaction) -> None:
        e = msg.payload
        host = await fresh_host(tx, e.host_id, e.generation)
        if host is None:
            return
        await s._put_host(tx, host.model_copy(update={"schedulable": True, "inventory_generation": e.generation}))
        await s.schedule(tx, msg.envelope.occurred_at)

    async def on_gpu_faulted(msg: Message[GpuFaulted], tx: Transaction) -> None:
        e = msg.payload
        host = await fresh_host(tx, e.host_id, e.generation)
        if host is None:
            return
        now = msg.envelope.occurred_at
        why = f"GPU {e.gpu_id} failed ({e.code}); waiting to be placed again"
        hit = await s.workloads_on(tx, host, {e.gpu_index})
        requeued = [await s.requeue(tx, wl, "gpu_fault", why, now) for wl in hit]
        host = await s._host(tx, e.host_id)
        assert host is not None
        faults = sorted({*host.faults, e.gpu_index})
        await s._put_host(tx, host.model_copy(update={"faults": faults, "inventory_generation": e.generation}))
        await s.schedule(tx, now, also=tuple(requeued))

    async def on_gpu_fault_cleared(msg: Message[GpuFaultCleared], tx: Transaction) -> None:
        e = msg.payload
        host = await fresh_host(tx, e.host_id, e.generation)
        if host is None:
            return
        faults = [i for i in host.faults if i != e.gpu_index]
        await s._put_host(tx, host.model_copy(update={"faults": faults, "inventory_generation": e.generation}))
        await s.schedule(tx, msg.envelope.occurred_at)

    async def on_host_decommissioned(msg: Message[HostDecommissioned], tx: Transaction) -> None:
        e = msg.payload
        host = await fresh_host(tx, e.host_id, e.generation)
        if host is None:
            return
        await s._put_host(tx, host.model_copy(update={"schedulable": False, "inventory_generation": e.generation}))

    async def on_tick(msg: Message[SchedulingTick], tx: Transaction) -> None:
        """Stop workloads whose maximum duration is over, at the instant it ended."""
        await s.sync(tx)
        now = msg.payload.at
        due: Any = await tx.redis.zrangebyscore(DEADLINES, "-inf", now.timestamp(), start=0, num=256)
        freed = False
        for raw in due:
            wid = text(raw)
            doc = await tx.get(workload_key(wid))
            if doc is None:
                tx.zrem(DEADLINES, wid)
                continue
            wl = Workload.model_validate(doc)
            if wl.status != "running" or wl.started_at is None:
                tx.zrem(DEADLINES, wid)
                continue
            ended = wl.started_at + timedelta(seconds=wl.max_duration_s)
            if ended > now:
                continue
            why = f"reached its maximum duration of {wl.max_duration_s} s"
            await s.stop(tx, wl, "max_duration", "completed", why, ended)
            freed = True
        requeued, beneficiaries = await s.stop_preempted(tx, now)
        if requeued:
            # The work the spot GPUs were freed for goes first.
            for beneficiary in beneficiaries:
                doc = await tx.get(workload_key(beneficiary))
                if doc is not None and Workload.model_validate(doc).status == "queued":
                    await s.try_place(tx, Workload.model_validate(doc), now)
        # Level-triggered as well as edge-triggered: a pass every tick while work waits.
        # Two messages handled at once on different streams (a submission and the
        # host it needs) can each miss the other's change, and nothing else would
        # wake the queued work up (a lost wakeup); the tick does, within tick_s.
        if freed or requeued or await tx.redis.zcard(QUEUE):
            await s.schedule(tx, now, also=tuple(requeued))

    async def on_budget_exceeded(msg: Message[BudgetExceeded], tx: Transaction) -> None:
        """Admit no new work for the tenant. At its hard budget, stop all its running work
        now (hard means hard: the month ends within a meter reading of the budget); when
        its credit ran out, stop its spot and dev work."""
        tenant = msg.envelope.tenant_id
        if tenant is None:
            return
        await s.sync(tx)
        await tx.put(budget_key(tenant), {"blocked": True, "reason": msg.payload.reason})
        now = msg.envelope.occurred_at
        # At a hard budget, work ends when the charges reached it, not when the news got
        # here: what ran in between is the cloud's (in an accelerated demo that lag is hours).
        reached = msg.payload.reached_at if msg.payload.cause == "hard_budget" else None
        ids: Any = await tx.redis.hkeys(f"mc:scheduling:tenant:{tenant}:workloads")
        for raw in sorted(ids):
            wid = text(raw)
            doc = await tx.get(workload_key(wid))
            if doc is None:
                continue
            wl = Workload.model_validate(doc)
            everything = msg.payload.cause == "hard_budget"
            stoppable = everything or wl.price_class in BUDGET_STOPPED or wl.kind in BUDGET_STOPPED
            if wl.status != "running" or not stoppable:
                continue
            why = f"stopped because the budget is exhausted: {msg.payload.reason}"
            at = now if reached is None or wl.started_at is None else max(wl.started_at, min(reached, now))
            await s.stop(tx, wl, "budget", "cancelled", why, at)
        await s.schedule(tx, now)

    async def on_budget_restored(msg: Message[BudgetRestored], tx: Transaction) -> None:
        tenant = msg.envelope.tenant_id
        if tenant is None:
            return
        await s.sync(tx)
        await tx.put(budget_key(tenant), {"blocked": False, "reason": msg.payload.reason})
        await s.schedule(tx, msg.envelope.occurred_at)

    runtime.add_route(BudgetExceeded, on_budget_exceeded)
    runtime.add_route(BudgetRestored, on_budget_restored)
    runtime.every(runtime.settings.tick_s, lambda now: SchedulingTick(at=now))
    runtime.add_route(SchedulingTick, on_tick)
    runtime.add_route(SubmitWorkload, on_submit)
    runtime.add_route(CompleteWorkload, on_complete)
    runtime.add_route(CancelWorkload, on_cancel)
    runtime.add_route(SetQuota, on_set_quota)
    runtime.add_route(GrantReservation, on_grant_reservation)
    runtime.add_route(HostRegistered, on_host_registered)
    runtime.add_route(HostDrained, on_host_drained)
    runtime.add_route(HostUndrained, on_host_undrained)
    runtime.add_route(GpuFaulted, on_gpu_faulted)
    runtime.add_route(GpuFaultCleared, on_gpu_fault_cleared)
    runtime.add_route(HostDecommissioned, on_host_decommissioned)
