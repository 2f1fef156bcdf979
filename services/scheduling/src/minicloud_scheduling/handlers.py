"""Scheduling's handlers: load → decide → stage. Each takes the message, the
transaction and the process's fleet cache; the queue policy is in ``queue.py``, the
staged changes in ``actions.py``, the keys in ``store.py``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from minicloud_scheduling import actions, store
from minicloud_scheduling.fleetcache import FleetCache
from minicloud_scheduling.placement import NoPlacement
from minicloud_scheduling.queue import budget_stops
from minicloud_scheduling.state import HostRecord, Reservation, Workload, asked_skus, queue_score
from minicloud_shared.contracts import Message
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
    CancelWorkload,
    CompleteWorkload,
    GrantReservation,
    QuotaSet,
    ReservationGranted,
    SchedulingTick,
    SetQuota,
    SubmitWorkload,
    WorkloadAccepted,
    WorkloadEnded,
    WorkloadRejected,
)
from minicloud_shared.runtime import Transaction
from minicloud_shared.skus import skus

# What a WorkloadAccepted repeats of the workload.
ACCEPTED = set(WorkloadAccepted.model_fields)


def _reject(tx: Transaction, msg: Message[Any], workload_id: str, code: str, reason: str) -> None:
    tx.emit(WorkloadRejected(workload_id=workload_id, code=code, reason=reason), tenant_id=msg.envelope.tenant_id)


# --- tenants' commands ------------------------------------------------------------------


async def on_submit(msg: Message[SubmitWorkload], tx: Transaction, cache: FleetCache) -> None:
    await cache.sync(tx)
    c, tenant = msg.payload, msg.envelope.tenant_id
    if tenant is None:
        _reject(tx, msg, c.workload_id, "conflict", "a workload needs a tenant")
        return
    existing = await store.load_workload(tx, c.workload_id)
    if existing is not None:
        if not existing.same_request(c, tenant):
            _reject(tx, msg, c.workload_id, "conflict", "this id names another workload (idempotency key reused)")
        return  # the same submission again: already answered
    blocked = await store.budget_block(tx, tenant)
    if blocked is not None:
        _reject(tx, msg, c.workload_id, "budget", f"no new work is admitted: {blocked}")
        return
    unknown = [s for s in ([c.sku] if c.sku else c.skus or []) if s not in skus()]
    if unknown:
        _reject(tx, msg, c.workload_id, "no_such_capacity", f"unknown GPU SKU {unknown[0]!r}")
        return
    sku, accepted = asked_skus(c.sku, c.skus)
    now = msg.envelope.occurred_at
    wl = Workload(
        workload_id=c.workload_id,
        tenant_id=tenant,
        name=c.name,
        kind=c.kind,
        sku=sku,
        skus=accepted,
        gpus_per_node=c.gpus_per_node,
        nodes=c.nodes,
        region=c.region,
        gpu_milli=c.gpu_milli,
        cpu_milli=c.cpu_milli,
        memory_mib=c.memory_mib,
        mig_profile=c.mig_profile,
        price_class=c.price_class,
        priority=c.priority,
        max_duration_s=c.max_duration_s,
        client_command_id=c.client_command_id,
        submitted_at=now,
        run=c.run,
        correlation_id=msg.envelope.correlation_id,
    )
    why = cache.fleet.find(wl.request())
    if isinstance(why, NoPlacement) and why.code == "too_large":
        _reject(tx, msg, c.workload_id, "too_large", why.reason)
        return
    cache.fleet.mix.observe(wl.request())  # what fragmentation is measured against
    await tx.put(store.workload_key(c.workload_id), wl)
    tx.zadd(store.QUEUE, c.workload_id, queue_score(c.priority, now, c.price_class))
    tx.hset(store.tenant_workloads_key(tenant), c.workload_id, c.client_command_id)
    tx.emit(WorkloadAccepted(**wl.model_dump(include=ACCEPTED)))
    await actions.schedule(tx, cache, now, also=(wl,))


async def _end(
    tx: Transaction, cache: FleetCache, msg: Message[Any], outcome: Literal["completed", "cancelled"], reason: str
) -> None:
    await cache.sync(tx)
    workload_id = msg.payload.workload_id
    wl = await store.load_workload(tx, workload_id)
    if wl is None or wl.tenant_id != msg.envelope.tenant_id:
        _reject(tx, msg, workload_id, "unknown_workload", f"no workload {workload_id}")
        return
    if wl.status in ("completed", "cancelled", "failed"):
        return  # already over: asking again changes nothing
    now = msg.envelope.occurred_at
    if wl.status == "queued":
        if outcome == "completed":
            _reject(tx, msg, workload_id, "not_running", f"workload {workload_id} has not started; cancel it instead")
            return
        tx.zrem(store.QUEUE, workload_id)
    else:
        wl = await actions.release(tx, cache, wl, "completed" if outcome == "completed" else "cancelled", now)
    await tx.put(store.workload_key(workload_id), wl.model_copy(update={"status": outcome}))
    tx.emit(
        WorkloadEnded(workload_id=workload_id, outcome=outcome, reason=reason, ended_at=now),
        correlation_id=wl.correlation_id,
    )
    await actions.schedule(tx, cache, now)


async def on_complete(msg: Message[CompleteWorkload], tx: Transaction, cache: FleetCache) -> None:
    await _end(tx, cache, msg, "completed", "completed by the tenant")


async def on_cancel(msg: Message[CancelWorkload], tx: Transaction, cache: FleetCache) -> None:
    await _end(tx, cache, msg, "cancelled", msg.payload.reason)


async def on_set_quota(msg: Message[SetQuota], tx: Transaction, cache: FleetCache) -> None:
    tenant, c = msg.envelope.tenant_id, msg.payload
    if tenant is None:
        return
    quota = await store.load_quota(tx, tenant)
    limits = {**quota.limits, f"{c.sku}|{c.region}": c.gpus}
    await tx.put(store.quota_key(tenant), quota.model_copy(update={"limits": limits}))
    tx.emit(QuotaSet(sku=c.sku, region=c.region, gpus=c.gpus))
    await cache.sync(tx)
    await actions.schedule(tx, cache, msg.envelope.occurred_at)


async def on_grant_reservation(msg: Message[GrantReservation], tx: Transaction, cache: FleetCache) -> None:
    tenant, c = msg.envelope.tenant_id, msg.payload
    if tenant is None:
        return
    quota = await store.load_quota(tx, tenant)
    granted = Reservation(sku=c.sku, region=c.region, gpus=c.gpus, starts_at=c.starts_at, ends_at=c.ends_at)
    reservations = {**quota.reservations, c.reservation_id: granted}
    await tx.put(store.quota_key(tenant), quota.model_copy(update={"reservations": reservations}))
    tx.emit(ReservationGranted(reservation_id=c.reservation_id, **granted.model_dump()), tenant_id=tenant)
    await cache.sync(tx)
    await actions.schedule(tx, cache, msg.envelope.occurred_at)


# --- inventory's facts ------------------------------------------------------------------


async def _fresh_host(tx: Transaction, cache: FleetCache, host_id: str, generation: int) -> HostRecord | None:
    """The host's record, if this fact is newer than what scheduling knows of it."""
    await cache.sync(tx)
    host = await store.load_host(tx, host_id)
    if host is None or host.inventory_generation >= generation:
        return None  # unknown, or a fact older than what we know
    return host


async def on_host_registered(msg: Message[HostRegistered], tx: Transaction, cache: FleetCache) -> None:
    e = msg.payload
    await cache.sync(tx)
    known = await store.load_host(tx, e.host_id)
    if known is not None:
        declared = (e.address, e.cpu_milli or 0, e.memory_mib or 0, e.gpu_mode, e.mig_layout or [])
        if e.generation > known.inventory_generation and declared != (
            known.address,
            known.cpu_milli,
            known.memory_mib,
            known.gpu_mode,
            known.mig_layout,
        ):
            # Registered again by its agent, at another address or with what it declares changed.
            update = {
                "address": e.address,
                "cpu_milli": e.cpu_milli or 0,
                "memory_mib": e.memory_mib or 0,
                "gpu_mode": e.gpu_mode,
                "mig_layout": e.mig_layout or [],
                "inventory_generation": e.generation,
            }
            await actions.put_host(tx, cache, known.model_copy(update=update))
            await actions.schedule(tx, cache, msg.envelope.occurred_at)
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
        address=e.address,
        cpu_milli=e.cpu_milli or 0,
        memory_mib=e.memory_mib or 0,
        gpu_mode=e.gpu_mode,
        mig_layout=e.mig_layout or [],
    )
    await actions.put_host(tx, cache, host)
    tx.sadd(store.HOSTS, e.host_id)
    await actions.schedule(tx, cache, msg.envelope.occurred_at)


async def on_gpu_mode_set(msg: Message[GpuModeSet], tx: Transaction, cache: FleetCache) -> None:
    e = msg.payload
    host = await _fresh_host(tx, cache, e.host_id, e.generation)
    if host is None:
        return
    update = {"gpu_mode": e.gpu_mode, "mig_layout": e.mig_layout or [], "inventory_generation": e.generation}
    await actions.put_host(tx, cache, host.model_copy(update=update))
    await actions.schedule(tx, cache, msg.envelope.occurred_at)


async def on_host_drained(msg: Message[HostDrained], tx: Transaction, cache: FleetCache) -> None:
    e = msg.payload
    host = await _fresh_host(tx, cache, e.host_id, e.generation)
    if host is None:
        return
    host = host.model_copy(update={"schedulable": False, "inventory_generation": e.generation})
    await actions.put_host(tx, cache, host)
    now = msg.envelope.occurred_at
    why = f"host {e.host_id} is being drained ({e.reason}); waiting to be placed again"
    hit = await actions.workloads_on(tx, host)
    requeued = [await actions.requeue(tx, cache, wl, "drain", why, now) for wl in hit]
    await actions.schedule(tx, cache, now, also=tuple(requeued))


async def on_host_undrained(msg: Message[HostUndrained], tx: Transaction, cache: FleetCache) -> None:
    e = msg.payload
    host = await _fresh_host(tx, cache, e.host_id, e.generation)
    if host is None:
        return
    update = {"schedulable": True, "inventory_generation": e.generation}
    await actions.put_host(tx, cache, host.model_copy(update=update))
    await actions.schedule(tx, cache, msg.envelope.occurred_at)


async def on_gpu_faulted(msg: Message[GpuFaulted], tx: Transaction, cache: FleetCache) -> None:
    e = msg.payload
    host = await _fresh_host(tx, cache, e.host_id, e.generation)
    if host is None:
        return
    now = msg.envelope.occurred_at
    why = f"GPU {e.gpu_id} failed ({e.code}); waiting to be placed again"
    hit = await actions.workloads_on(tx, host, {e.gpu_index})
    requeued = [await actions.requeue(tx, cache, wl, "gpu_fault", why, now) for wl in hit]
    host = await store.load_host(tx, e.host_id)
    assert host is not None
    update = {"faults": sorted({*host.faults, e.gpu_index}), "inventory_generation": e.generation}
    await actions.put_host(tx, cache, host.model_copy(update=update))
    await actions.schedule(tx, cache, now, also=tuple(requeued))


async def on_gpu_fault_cleared(msg: Message[GpuFaultCleared], tx: Transaction, cache: FleetCache) -> None:
    e = msg.payload
    host = await _fresh_host(tx, cache, e.host_id, e.generation)
    if host is None:
        return
    update = {"faults": [i for i in host.faults if i != e.gpu_index], "inventory_generation": e.generation}
    await actions.put_host(tx, cache, host.model_copy(update=update))
    await actions.schedule(tx, cache, msg.envelope.occurred_at)


async def on_host_decommissioned(msg: Message[HostDecommissioned], tx: Transaction, cache: FleetCache) -> None:
    e = msg.payload
    host = await _fresh_host(tx, cache, e.host_id, e.generation)
    if host is None:
        return
    update = {"schedulable": False, "inventory_generation": e.generation}
    await actions.put_host(tx, cache, host.model_copy(update=update))


async def on_host_unreachable(msg: Message[HostUnreachable], tx: Transaction, cache: FleetCache) -> None:
    """The host's agent fell silent: no new work goes there, and its work is released
    at the last heartbeat (nothing is charged after it: the cloud's fault) and requeued."""
    e = msg.payload
    host = await _fresh_host(tx, cache, e.host_id, e.generation)
    if host is None:
        return
    await actions.put_host(
        tx, cache, host.model_copy(update={"reachable": False, "inventory_generation": e.generation})
    )
    now = msg.envelope.occurred_at
    lost_at = min(e.last_seen_at, now)
    why = f"host {e.host_id} stopped answering (last heartbeat {e.last_seen_at.isoformat()}); waiting to run again"
    hit = await actions.workloads_on(tx, host)
    requeued = []
    for wl in hit:
        at = max(lost_at, wl.started_at) if wl.started_at is not None else lost_at
        requeued.append(await actions.requeue(tx, cache, wl, "host_lost", why, at, code="host_lost"))
    await actions.schedule(tx, cache, now, also=tuple(requeued))


async def on_host_reachable(msg: Message[HostReachable], tx: Transaction, cache: FleetCache) -> None:
    e = msg.payload
    host = await _fresh_host(tx, cache, e.host_id, e.generation)
    if host is None:
        return
    await actions.put_host(tx, cache, host.model_copy(update={"reachable": True, "inventory_generation": e.generation}))
    await actions.schedule(tx, cache, msg.envelope.occurred_at)


# --- the agents' reports ----------------------------------------------------------------


async def on_task_exited(msg: Message[TaskExited], tx: Transaction, cache: FleetCache) -> None:
    """A node's process ended. Any non-zero exit fails the gang (the other nodes are
    stopped); when every node has exited 0 the workload is completed. The meter stops
    at the exit. Reports for an allocation that is no longer the workload's current
    one (released, requeued) or from a host it does not hold change nothing."""
    e = msg.payload
    await cache.sync(tx)
    wl = await store.load_workload(tx, e.workload_id)
    if wl is None or wl.status != "running" or wl.allocation_id != e.allocation_id:
        return
    hosts = [h for h, _ in wl.slices]
    if not 0 <= e.rank < len(hosts) or hosts[e.rank] != e.host_id or msg.envelope.tenant_id != wl.tenant_id:
        return  # not a node of this allocation: a confused (or lying) agent
    if e.stopped:
        return  # the cloud asked it to stop (a spot notice): its release is on its way
    now = msg.envelope.occurred_at
    assert wl.started_at is not None
    at = min(max(e.exited_at, wl.started_at), now)  # an agent's clock cannot move the meter outside the run
    if e.exit_code != 0:
        what = "could not start" if e.exit_code == -1 else f"exited with code {e.exit_code}"
        why = f"node {e.rank} on host {e.host_id} {what}" + (f": {e.detail}" if e.detail else "")
        await actions.stop(tx, cache, wl, "failed", "failed", why, at, exit_code=e.exit_code, host_id=e.host_id)
        await actions.schedule(tx, cache, now)
        return
    exited = sorted({*wl.exited, e.rank})
    last = max(at, wl.exited_at) if wl.exited_at is not None else at
    if len(exited) < len(hosts):
        await tx.put(store.workload_key(wl.workload_id), wl.model_copy(update={"exited": exited, "exited_at": last}))
        return
    why = "exited with code 0" if len(hosts) == 1 else f"all {len(hosts)} nodes exited with code 0"
    await actions.stop(tx, cache, wl, "completed", "completed", why, last, exit_code=0)
    await actions.schedule(tx, cache, now)


# --- time and budgets -------------------------------------------------------------------


async def on_tick(msg: Message[SchedulingTick], tx: Transaction, cache: FleetCache) -> None:
    """Stop workloads whose maximum duration is over (at the instant it ended), stop
    spot work whose notice ran out, and make a placement pass while work waits."""
    await cache.sync(tx)
    now = msg.payload.at
    freed = False
    for wid in await store.due(tx, store.DEADLINES, now.timestamp()):
        wl = await store.load_workload(tx, wid)
        if wl is None or wl.status != "running" or wl.started_at is None:
            tx.zrem(store.DEADLINES, wid)
            continue
        ended = wl.started_at + timedelta(seconds=wl.max_duration_s)
        if ended > now:
            continue
        why = f"reached its maximum duration of {wl.max_duration_s} s"
        await actions.stop(tx, cache, wl, "max_duration", "completed", why, ended)
        freed = True
    requeued, beneficiaries = await actions.stop_preempted(tx, cache, now)
    if requeued:
        await actions.place_first(tx, cache, beneficiaries, now)  # the work the spot GPUs were freed for
    # Level-triggered as well as edge-triggered: a pass every tick while work waits.
    # Two messages handled at once on different streams (a submission and the host it
    # needs) can each miss the other's change, and nothing else would wake the queued
    # work up (a lost wakeup); the tick does, within tick_s.
    if freed or requeued or await store.queue_length(tx):
        await actions.schedule(tx, cache, now, also=tuple(requeued))


async def on_budget_exceeded(msg: Message[BudgetExceeded], tx: Transaction, cache: FleetCache) -> None:
    """Admit no new work for the tenant, and stop what its budget stop ends
    (``queue.budget_stops``)."""
    tenant, e = msg.envelope.tenant_id, msg.payload
    if tenant is None:
        return
    await cache.sync(tx)
    await store.put_budget(tx, tenant, True, e.reason)
    now = msg.envelope.occurred_at
    running = [wl for wid in await store.tenant_workload_ids(tx, tenant) if (wl := await store.load_workload(tx, wid))]
    why = f"stopped because the budget is exhausted: {e.reason}"
    for wl, at in budget_stops(running, e.cause, e.reached_at, now):
        await actions.stop(tx, cache, wl, "budget", "cancelled", why, at)
    await actions.schedule(tx, cache, now)


async def on_budget_restored(msg: Message[BudgetRestored], tx: Transaction, cache: FleetCache) -> None:
    tenant = msg.envelope.tenant_id
    if tenant is None:
        return
    await cache.sync(tx)
    await store.put_budget(tx, tenant, False, msg.payload.reason)
    await actions.schedule(tx, cache, msg.envelope.occurred_at)
