"""The inventory service's handlers (registered in ``app.py``).

Entrypoints only translate: load the host record, apply the domain rule, store the
new record (its version is the host's generation), count the GPUs' states, and emit
the fact — or, when the rule refuses, emit the refusal with its reason. A bad
command never crashes the consumer and is never dead-lettered silently: it becomes
an ``InventoryCommandRejected`` event its sender can read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from minicloud_inventory import domain
from minicloud_inventory.domain import GPU_STATES, Host, Refusal, Unchanged
from minicloud_inventory.store import CAPACITY, HOSTS, SEEN, SERVICE, capacity_field, host_key
from minicloud_shared.contracts import Message, Payload
from minicloud_shared.contracts.agent import HostHeartbeat
from minicloud_shared.contracts.envelope import text
from minicloud_shared.contracts.inventory import (
    ClearGpuFault,
    DecommissionHost,
    DrainHost,
    GpuFaultCleared,
    GpuFaulted,
    GpuModeSet,
    HostDecommissioned,
    HostDrained,
    HostReachable,
    HostRegistered,
    HostUndrained,
    HostUnreachable,
    InventoryCommandRejected,
    InventoryTick,
    RegisterHost,
    ReportGpuFault,
    SetGpuMode,
    UndrainHost,
)
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased
from minicloud_shared.contracts.topology import AGENT, INVENTORY_EVENTS
from minicloud_shared.runtime import Transaction
from minicloud_shared.skus import skus

log = structlog.get_logger(service=SERVICE)  # lazy: resolved with the configuration in force


def _count(tx: Transaction, before: Host | None, after: Host) -> None:
    """Move the host's GPUs between the capacity counters."""
    old = before.gpu_states() if before is not None else {}
    new = after.gpu_states()
    for state in GPU_STATES:
        delta = new.get(state, 0) - old.get(state, 0)
        if delta:
            tx.incr(CAPACITY, capacity_field(after.sku, after.region, state), delta)
    was_in = before is not None and before.state != "decommissioned"
    is_in = after.state != "decommissioned"
    if was_in != is_in:
        tx.incr(CAPACITY, capacity_field(after.sku, after.region, "hosts"), 1 if is_in else -1)
    old_condition, new_condition = host_condition(before), host_condition(after)
    if old_condition != new_condition:
        if old_condition is not None:
            tx.incr(CAPACITY, capacity_field(after.sku, after.region, f"hosts_{old_condition}"), -1)
        if new_condition is not None:
            tx.incr(CAPACITY, capacity_field(after.sku, after.region, f"hosts_{new_condition}"), 1)


def host_condition(host: Host | None) -> str | None:
    """What the hosts-by-state counters count a host as: ``unreachable`` while its
    agent is silent, else its state; nothing once decommissioned (or before it exists)."""
    if host is None or host.state == "decommissioned":
        return None
    return "unreachable" if not host.reachable else host.state


async def _load(tx: Transaction, host_id: str) -> Host | None:
    doc = await tx.get(host_key(host_id))
    return None if doc is None else Host.model_validate(doc)


async def _change(
    tx: Transaction,
    msg: Message[Any],
    host_id: str,
    change: Callable[[Host | None], Host],
    fact: Callable[[Host, int], Payload],
) -> bool:
    before = await _load(tx, host_id)
    try:
        after = change(before)
    except Unchanged:
        return False
    except Refusal as refusal:
        log.info("command refused", host_id=host_id, code=refusal.code, reason=refusal.reason)
        tx.emit(
            InventoryCommandRejected(
                command_type=msg.envelope.event_type,
                command_id=msg.envelope.event_id,
                host_id=host_id,
                code=refusal.code,
                reason=refusal.reason,
            ),
            stream=INVENTORY_EVENTS,
        )
        return False
    generation = await tx.put(host_key(host_id), after)
    if before is None:
        tx.sadd(HOSTS, host_id)
    _count(tx, before, after)
    tx.emit(fact(after, generation))
    return True


async def on_register_host(msg: Message[RegisterHost], tx: Transaction) -> None:
    c = msg.payload
    await _change(
        tx,
        msg,
        c.host_id,
        lambda h: domain.register(
            h,
            host_id=c.host_id,
            region=c.region,
            zone=c.zone,
            rack=c.rack,
            nvlink_domain=c.nvlink_domain,
            sku=c.sku,
            gpu_count=c.gpu_count,
            catalog=skus(),
            address=c.address,
            again_ok=msg.envelope.producer == AGENT,
            cpu_milli=c.cpu_milli,
            memory_mib=c.memory_mib,
            gpu_mode=c.gpu_mode,
            mig_layout=c.mig_layout,
        ),
        lambda h, gen: HostRegistered(
            host_id=h.host_id,
            region=h.region,
            zone=h.zone,
            rack=h.rack,
            nvlink_domain=h.nvlink_domain,
            sku=h.sku,
            gpu_ids=[h.gpu_id(i) for i in range(h.gpu_count)],
            generation=gen,
            address=h.address,
            cpu_milli=h.cpu_milli,
            memory_mib=h.memory_mib,
            gpu_mode=h.gpu_mode,
            mig_layout=h.mig_layout or None,
        ),
    )


async def on_set_gpu_mode(msg: Message[SetGpuMode], tx: Transaction) -> None:
    c = msg.payload
    await _change(
        tx,
        msg,
        c.host_id,
        lambda h: domain.set_gpu_mode(h, c.host_id, c.gpu_mode, c.mig_layout, skus()),
        lambda h, gen: GpuModeSet(
            host_id=h.host_id, gpu_mode=h.gpu_mode, generation=gen, mig_layout=h.mig_layout or None
        ),
    )


async def on_drain_host(msg: Message[DrainHost], tx: Transaction) -> None:
    c = msg.payload
    await _change(
        tx,
        msg,
        c.host_id,
        lambda h: domain.drain(h, c.host_id, c.reason),
        lambda h, gen: HostDrained(host_id=h.host_id, reason=c.reason, generation=gen),
    )


async def on_undrain_host(msg: Message[UndrainHost], tx: Transaction) -> None:
    c = msg.payload
    await _change(
        tx,
        msg,
        c.host_id,
        lambda h: domain.undrain(h, c.host_id),
        lambda h, gen: HostUndrained(host_id=h.host_id, generation=gen),
    )


async def on_decommission_host(msg: Message[DecommissionHost], tx: Transaction) -> None:
    c = msg.payload
    if await _change(
        tx,
        msg,
        c.host_id,
        lambda h: domain.decommission(h, c.host_id),
        lambda h, gen: HostDecommissioned(host_id=h.host_id, generation=gen),
    ):
        tx.zrem(SEEN, c.host_id)  # no longer watched for silence


async def on_report_gpu_fault(msg: Message[ReportGpuFault], tx: Transaction) -> None:
    c = msg.payload
    await _change(
        tx,
        msg,
        c.host_id,
        lambda h: domain.fault(h, c.host_id, c.gpu_index, c.code),
        lambda h, gen: GpuFaulted(
            host_id=h.host_id,
            gpu_id=h.gpu_id(c.gpu_index),
            gpu_index=c.gpu_index,
            code=c.code,
            detail=c.detail,
            generation=gen,
        ),
    )


async def on_clear_gpu_fault(msg: Message[ClearGpuFault], tx: Transaction) -> None:
    c = msg.payload
    await _change(
        tx,
        msg,
        c.host_id,
        lambda h: domain.clear(h, c.host_id, c.gpu_index),
        lambda h, gen: GpuFaultCleared(
            host_id=h.host_id, gpu_id=h.gpu_id(c.gpu_index), gpu_index=c.gpu_index, generation=gen
        ),
    )


async def on_allocation_placed(msg: Message[AllocationPlaced], tx: Transaction) -> None:
    for part in msg.payload.gpus:
        host = await _load(tx, part.host_id)
        if host is None:
            log.warning("allocation on a host inventory does not know", host_id=part.host_id)
            continue
        after = domain.allocate(
            host,
            part.gpu_indices,
            msg.payload.allocation_id,
            shared=bool(msg.payload.gpu_milli or msg.payload.mig_profile),
        )
        await tx.put(host_key(part.host_id), after)
        _count(tx, host, after)


async def on_allocation_released(msg: Message[AllocationReleased], tx: Transaction) -> None:
    for part in msg.payload.gpus:
        host = await _load(tx, part.host_id)
        if host is None:
            continue
        after = domain.release(host, msg.payload.allocation_id)
        await tx.put(host_key(part.host_id), after)
        _count(tx, host, after)


# --- the agents' heartbeats ---------------------------------------------------------------


async def on_heartbeat(msg: Message[HostHeartbeat], tx: Transaction) -> None:
    """Note when the host's agent was last heard; an unreachable host is back once its
    agent runs nothing but what the host holds."""
    e = msg.payload
    host = await _load(tx, e.host_id)
    if host is None or host.state == "decommissioned":
        return  # an agent of a host the fleet does not have (its registration follows)
    tx.zadd(SEEN, e.host_id, e.at.timestamp())
    after = domain.reachable(host)
    if after is None:
        return
    # Reconciled, not trusted blindly: while its agent still runs work that was
    # released when the host was lost, the host takes none (the agent stops it: its
    # StopTasks wait in the host's stream; a later heartbeat brings the host back).
    stale = sorted(set(e.running) - set(host.busy()))
    if stale:
        log.info("host heard again, still running released work", host_id=e.host_id, allocations=stale[:5])
        return
    generation = await tx.put(host_key(e.host_id), after)
    _count(tx, host, after)
    log.info("host reachable again", host_id=e.host_id)
    tx.emit(HostReachable(host_id=e.host_id, generation=generation))


async def on_tick(msg: Message[InventoryTick], tx: Transaction, silence_s: float) -> None:
    """Mark hosts whose agent has been silent for ``silence_s`` unreachable. Only
    hosts with an agent are watched: a host registered by an operator, with no agent
    (a simulated fleet), never sent a heartbeat and is never marked."""
    cutoff = msg.payload.at.timestamp() - silence_s
    raw: Any = await tx.redis.zrangebyscore(SEEN, "-inf", cutoff, start=0, num=256, withscores=True)
    for member, score in raw:
        host_id = text(member)
        host = await _load(tx, host_id)
        after = None if host is None else domain.unreachable(host)
        tx.zrem(SEEN, host_id)  # watched again from its next heartbeat
        if host is None or after is None:
            continue
        generation = await tx.put(host_key(host_id), after)
        _count(tx, host, after)
        last_seen = datetime.fromtimestamp(float(score), UTC)
        log.warning("host unreachable", host_id=host_id, last_seen_at=last_seen.isoformat())
        tx.emit(HostUnreachable(host_id=host_id, last_seen_at=last_seen, generation=generation))
