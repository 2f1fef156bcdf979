"""Operators' commands followed to their end (``store.op_key``): settled by the fact
that answers them, rejected with the owner's reason, or failed when the owner
dead-lettered them; and the reservations scheduling granted."""

from __future__ import annotations

import json
from typing import Any

from minicloud_gateway import store
from minicloud_shared.contracts import Message
from minicloud_shared.contracts.billing import BillingCommandRejected
from minicloud_shared.contracts.inventory import InventoryCommandRejected
from minicloud_shared.contracts.runtime import DeadLettered
from minicloud_shared.contracts.scheduling import ReservationGranted, SubmitWorkload
from minicloud_shared.runtime import Transaction


def op_keys(m: Message[Any]) -> list[str]:
    """The operation a fact may settle (read with the batch, see ``settle``)."""
    return [store.op_key(m.envelope.causation_id)] if m.envelope.causation_id else []


async def settle(tx: Transaction, command_id: str | None, status: str, message: str, code: str = "") -> None:
    """Record how an operator's command ended, if the gateway is following it."""
    if command_id is None:
        return
    key = store.op_key(command_id)
    doc = await tx.get(key)
    if doc is None or doc.get("status") != "pending":
        return
    await tx.put(key, {**doc, "status": status, "message": message, "code": code})


async def inventory_rejected(msg: Message[InventoryCommandRejected], tx: Transaction) -> None:
    p = msg.payload
    await settle(tx, p.command_id, "rejected", p.reason, p.code)


async def billing_rejected(msg: Message[BillingCommandRejected], tx: Transaction) -> None:
    p = msg.payload
    await settle(tx, msg.envelope.causation_id, "rejected", p.reason, p.code)


def reservation_keys(m: Message[Any]) -> list[str]:
    return [store.reservations_key(m.envelope.tenant_id or ""), *op_keys(m)]


async def reservation_granted(msg: Message[ReservationGranted], tx: Transaction) -> None:
    p, tenant = msg.payload, msg.envelope.tenant_id
    await settle(tx, msg.envelope.causation_id, "done", f"reservation {p.reservation_id} granted")
    if tenant is None:
        return
    doc = dict(await tx.get(store.reservations_key(tenant)) or {"items": {}})
    row = {"reservation_id": p.reservation_id, "tenant": tenant, **p.model_dump(mode="json")}
    await tx.put(store.reservations_key(tenant), {"items": {**doc["items"], p.reservation_id: row}})
    tx.sadd(store.RESERVATION_TENANTS, tenant)


def submitted_workload(m: Message[DeadLettered]) -> str | None:
    """The workload a dead-lettered submission names, if it does (its payload as sent)."""
    if m.payload.original_type != SubmitWorkload.event_type or m.envelope.tenant_id is None:
        return None
    try:
        found = json.loads(m.payload.data).get("workload_id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def dead_letter_keys(m: Message[DeadLettered]) -> list[str]:
    wid, tenant = submitted_workload(m), m.envelope.tenant_id
    return [store.op_key(m.envelope.event_id), *([store.workload_key(tenant, wid)] if wid and tenant else [])]


async def dead_lettered(msg: Message[DeadLettered], tx: Transaction) -> None:
    """A command its owner gave up on (dead-lettered: it could not be decoded, it failed
    on every delivery, or the owner refused it) fails the operation that follows it, and
    a submission the workload it named, with the reason; neither stays pending for good."""
    p = msg.payload
    why = f"{p.group} could not apply it ({p.kind}): {p.reason}"
    await settle(tx, msg.envelope.event_id, "failed", why, "dead_lettered")
    wid, tenant = submitted_workload(msg), msg.envelope.tenant_id
    if wid is None or tenant is None:
        return
    doc = await tx.get(store.workload_key(tenant, wid))
    if doc is not None and doc.get("status") == "submitted":
        await tx.put(store.workload_key(tenant, wid), {**doc, "status": "rejected", "code": "failed", "reason": why})


SUBSCRIPTIONS: list[tuple[type[Any], Any, Any]] = [
    (ReservationGranted, reservation_granted, reservation_keys),
    (InventoryCommandRejected, inventory_rejected, lambda m: [store.op_key(m.payload.command_id)]),
    (BillingCommandRejected, billing_rejected, op_keys),
]
