"""Hosts as the API shows them: place and state from inventory's facts, and the GPUs
each allocation holds from scheduling's (capacity and availability are counted from
them). A fact older than the host's generation changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minicloud_gateway import store
from minicloud_gateway.projections.operations import op_keys, settle
from minicloud_shared.contracts import Message
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
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased
from minicloud_shared.runtime import Transaction

Change = Callable[[dict[str, Any]], None]


async def change_host(tx: Transaction, host_id: str, change: Change, create: bool = True) -> None:
    """Apply ``change`` to a host's document (made if events about it come first)."""
    key = store.host_key(host_id)
    doc = await tx.get(key)
    if doc is None:
        if not create:
            return
        doc = {"host_id": host_id, "state": "unknown", "faulted": [], "allocated": {}}
        tx.sadd(store.HOSTS, host_id)
    doc = {**doc, "allocated": dict(doc["allocated"]), "faulted": list(doc["faulted"])}
    change(doc)
    await tx.put(key, doc)


def _newer(doc: dict[str, Any] | None, generation: int) -> bool:
    return doc is None or int(doc.get("generation", 0)) < generation


def host_keys(m: Message[Any]) -> list[str]:
    return [store.host_key(m.payload.host_id), *op_keys(m)]


async def registered(msg: Message[HostRegistered], tx: Transaction) -> None:
    p = msg.payload
    await settle(tx, msg.envelope.causation_id, "done", f"host {p.host_id} registered")
    if not _newer(await tx.get(store.host_key(p.host_id)), p.generation):
        return
    place = {k: getattr(p, k) for k in ("region", "zone", "rack", "nvlink_domain", "sku")}

    def apply(h: dict[str, Any]) -> None:
        h.update(place, gpus=len(p.gpu_ids), generation=p.generation, address=p.address)
        h.update(cpu_milli=p.cpu_milli, memory_mib=p.memory_mib, gpu_mode=p.gpu_mode, mig_layout=p.mig_layout)
        if h["state"] == "unknown":
            h["state"] = "active"

    await change_host(tx, p.host_id, apply)


async def _fact(msg: Message[Any], tx: Transaction, what: str, change: Change) -> None:
    """An inventory fact about a known host: settle the command, apply it if newer."""
    p = msg.payload
    await settle(tx, msg.envelope.causation_id, "done", f"host {p.host_id} {what}")
    if not _newer(await tx.get(store.host_key(p.host_id)), p.generation):
        return

    def apply(h: dict[str, Any]) -> None:
        change(h)
        h["generation"] = p.generation

    await change_host(tx, p.host_id, apply)


async def drained(msg: Message[HostDrained], tx: Transaction) -> None:
    await _fact(msg, tx, "drained", lambda h: h.update(state="draining", drain_reason=msg.payload.reason))


async def undrained(msg: Message[HostUndrained], tx: Transaction) -> None:
    await _fact(msg, tx, "undrained", lambda h: h.update(state="active", drain_reason=""))


async def decommissioned(msg: Message[HostDecommissioned], tx: Transaction) -> None:
    await _fact(msg, tx, "decommissioned", lambda h: h.update(state="decommissioned"))


async def unreachable(msg: Message[HostUnreachable], tx: Transaction) -> None:
    await _fact(msg, tx, "unreachable", lambda h: h.update(reachable=False))


async def reachable(msg: Message[HostReachable], tx: Transaction) -> None:
    await _fact(msg, tx, "reachable", lambda h: h.update(reachable=True))


async def gpu_mode_set(msg: Message[GpuModeSet], tx: Transaction) -> None:
    p = msg.payload
    await _fact(
        msg, tx, f"GPU mode set to {p.gpu_mode}", lambda h: h.update(gpu_mode=p.gpu_mode, mig_layout=p.mig_layout)
    )


async def gpu_faulted(msg: Message[GpuFaulted], tx: Transaction) -> None:
    i = msg.payload.gpu_index
    await _fact(msg, tx, "GPU fault recorded", lambda h: h.update(faulted=sorted({*h["faulted"], i})))


async def gpu_fault_cleared(msg: Message[GpuFaultCleared], tx: Transaction) -> None:
    i = msg.payload.gpu_index
    await _fact(msg, tx, "GPU fault cleared", lambda h: h.update(faulted=[x for x in h["faulted"] if x != i]))


async def allocation_placed(tx: Transaction, p: AllocationPlaced) -> None:
    """The GPUs an allocation holds, on each of its hosts."""
    for s in p.gpus:
        indices = s.gpu_indices

        def hold(h: dict[str, Any], indices: list[int] = indices) -> None:
            h["allocated"][p.allocation_id] = indices

        await change_host(tx, s.host_id, hold)


async def released(msg: Message[AllocationReleased], tx: Transaction) -> None:
    p = msg.payload
    for s in p.gpus:
        await change_host(tx, s.host_id, lambda h: h["allocated"].pop(p.allocation_id, None), create=False)


SUBSCRIPTIONS: list[tuple[type[Any], Any, Any]] = [
    (HostRegistered, registered, host_keys),
    (HostDrained, drained, host_keys),
    (HostUndrained, undrained, host_keys),
    (HostDecommissioned, decommissioned, host_keys),
    (GpuFaulted, gpu_faulted, host_keys),
    (GpuModeSet, gpu_mode_set, host_keys),
    (HostUnreachable, unreachable, host_keys),
    (HostReachable, reachable, host_keys),
    (GpuFaultCleared, gpu_fault_cleared, host_keys),
    (AllocationReleased, released, lambda m: [store.host_key(s.host_id) for s in m.payload.gpus]),
]
