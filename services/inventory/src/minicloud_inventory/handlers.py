"""The inventory service's handlers (registered in ``app.py``).

Entrypoints only translate: load the host record, apply the domain rule, store the
new record (its version is the host's generation), count the GPUs' states, and emit
the fact — or, when the rule refuses, emit the refusal with its reason. A bad
command never crashes the consumer and is never dead-lettered silently: it becomes
an ``InventoryCommandRejected`` event its sender can read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from minicloud_inventory import domain
from minicloud_inventory.domain import GPU_STATES, Host, Refusal
from minicloud_inventory.store import CAPACITY, HOSTS, SERVICE, capacity_field, host_key
from minicloud_shared.contracts import Message, Payload
from minicloud_shared.contracts.inventory import (
    ClearGpuFault,
    DecommissionHost,
    DrainHost,
    GpuFaultCleared,
    GpuFaulted,
    HostDecommissioned,
    HostDrained,
    HostRegistered,
    HostUndrained,
    InventoryCommandRejected,
    RegisterHost,
    ReportGpuFault,
    UndrainHost,
)
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased
from minicloud_shared.contracts.topology import INVENTORY_EVENTS
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


async def _load(tx: Transaction, host_id: str) -> Host | None:
    doc = await tx.get(host_key(host_id))
    return None if doc is None else Host.model_validate(doc)


async def _change(
    tx: Transaction,
    msg: Message[Any],
    host_id: str,
    change: Callable[[Host | None], Host],
    fact: Callable[[Host, int], Payload],
) -> None:
    before = await _load(tx, host_id)
    try:
        after = change(before)
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
        return
    generation = await tx.put(host_key(host_id), after)
    if before is None:
        tx.sadd(HOSTS, host_id)
    _count(tx, before, after)
    tx.emit(fact(after, generation))


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
    await _change(
        tx,
        msg,
        c.host_id,
        lambda h: domain.decommission(h, c.host_id),
        lambda h, gen: HostDecommissioned(host_id=h.host_id, generation=gen),
    )


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
        after = domain.allocate(host, part.gpu_indices, msg.payload.allocation_id)
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
