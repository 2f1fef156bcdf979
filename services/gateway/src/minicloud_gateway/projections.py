"""The gateway's read side: projections of the services' events into its own keys.

``mc:gateway:wl:<tenant>:<workload>`` holds a workload as a tenant sees it: status,
pending reason, allocation and when things happened; ``mc:gateway:wls:<tenant>`` lists a
tenant's workloads by submission order (for pagination). Hosts (``mc:gateway:host:<id>``,
listed in ``mc:gateway:hosts``) carry their place, state, faulted GPUs and the GPUs each
allocation holds, from inventory's and scheduling's events: capacity and availability
are counted from them. Invoices (``mc:gateway:inv:<tenant>:<month>``) and accounts
(``mc:gateway:acct:<tenant>``) are billing's snapshots. An operator's command is
followed in ``mc:gateway:op:<command id>`` until the owner accepts or rejects it.
Reads never touch another service's keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from redis.asyncio import Redis

from minicloud_shared.contracts import Message, text
from minicloud_shared.contracts.billing import (
    AccountUpdated,
    AllocationCharged,
    BillingCommandRejected,
    BudgetAlert,
    BudgetExceeded,
    BudgetRestored,
    InvoiceUpdated,
    PriceCatalogPublished,
)
from minicloud_shared.contracts.inventory import (
    GpuFaultCleared,
    GpuFaulted,
    HostDecommissioned,
    HostDrained,
    HostRegistered,
    HostUndrained,
    InventoryCommandRejected,
)
from minicloud_shared.contracts.runtime import DeadLettered
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    AllocationReleased,
    ReservationGranted,
    SubmitWorkload,
    WorkloadAccepted,
    WorkloadEnded,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadStarted,
)
from minicloud_shared.contracts.topology import BILLING_COMMANDS, INVENTORY_COMMANDS, SCHEDULING_COMMANDS
from minicloud_shared.runtime import ServiceRuntime, Transaction

CATALOG = "mc:gateway:catalog"  # catalog versions published after the base list, as billing accepted them


def workload_key(tenant: str, workload_id: str) -> str:
    return f"mc:gateway:wl:{tenant}:{workload_id}"


def workloads_key(tenant: str) -> str:
    return f"mc:gateway:wls:{tenant}"


HOSTS = "mc:gateway:hosts"  # every host id the gateway has seen

# A document the API writes before its events arrive (a submitted workload, a pending
# operation): created at version 1 unless the projection got there first, optionally
# listed in a sorted set in the same step; the document as it stands is returned.
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'v', 1, 'd', ARGV[1])
end
if KEYS[2] then
  redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
end
return redis.call('HGET', KEYS[1], 'd')
"""


async def read_doc(redis: Redis, key: str) -> dict[str, Any] | None:
    """A projection's document (the runtime's versioned record), or None."""
    data = await redis.hget(key, "d")
    return None if data is None else dict(json.loads(data))


async def read_docs(redis: Redis, keys: list[str]) -> list[dict[str, Any] | None]:
    """Several documents in one round trip, in the order of ``keys``."""
    pipe = redis.pipeline(transaction=False)
    for k in keys:
        pipe.hget(k, "d")
    return [None if d is None else dict(json.loads(d)) for d in await pipe.execute()]


async def members(redis: Redis, key: str) -> list[str]:
    """The members of a set, as text, sorted."""
    return sorted(text(m) for m in await redis.smembers(key))


async def ranked(redis: Redis, key: str, newest_first: bool = False) -> list[str]:
    """The members of a sorted set by score, as text."""
    raw: Any = await (redis.zrevrange(key, 0, -1) if newest_first else redis.zrange(key, 0, -1))
    return [text(m) for m in raw]


def request_digest(body: Any) -> str:
    """What identifies a request's body under its Idempotency-Key. It is kept in the
    document the key names (a workload, an operation), so the check lasts as long as
    the key's meaning does: a key names one thing for good."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def create_doc(redis: Redis, key: str, doc: dict[str, Any], index: tuple[str, str, float] | None = None) -> Any:
    """Write ``doc`` at version 1 unless the key exists (and list it in ``index``: sorted
    set, member, score); returns the document as it stands."""
    keys = [key, index[0]] if index else [key]
    args = [json.dumps(doc), index[2], index[1]] if index else [json.dumps(doc)]
    return json.loads(await redis.eval(_CREATE_LUA, len(keys), *keys, *args))


def host_key(host_id: str) -> str:
    return f"mc:gateway:host:{host_id}"


def invoice_key(tenant: str, month: str) -> str:
    return f"mc:gateway:inv:{tenant}:{month}"


def invoices_key(tenant: str) -> str:
    """Sorted set of the months a tenant has invoices for (score yyyymm)."""
    return f"mc:gateway:invs:{tenant}"


def account_key(tenant: str) -> str:
    return f"mc:gateway:acct:{tenant}"


def allocations_key(tenant: str) -> str:
    """Hash: allocation id -> workload id, for a tenant (explanations name workloads)."""
    return f"mc:gateway:allocs:{tenant}"


def reservations_key(tenant: str) -> str:
    """A tenant's reservations as scheduling granted them: {"items": {id: reservation}}."""
    return f"mc:gateway:resv:{tenant}"


RESERVATION_TENANTS = "mc:gateway:resv-tenants"  # tenants holding reservations


def op_key(command_id: str) -> str:
    return f"mc:gateway:op:{command_id}"


def _op_keys(m: Message[Any]) -> list[str]:
    """The operation a fact may settle (read with the batch, see ``settle``)."""
    return [op_key(m.envelope.causation_id)] if m.envelope.causation_id else []


def _workload_keys(m: Message[Any]) -> list[str]:
    """The workload document a scheduling or billing fact updates, read with its batch."""
    tenant = m.envelope.tenant_id
    return [workload_key(tenant, m.payload.workload_id)] if tenant is not None else []


def _account_keys(m: Message[Any]) -> list[str]:
    return [account_key(m.envelope.tenant_id)] if m.envelope.tenant_id is not None else []


def _slice_keys(m: Message[Any]) -> list[str]:
    return [host_key(s.host_id) for s in m.payload.gpus] + _workload_keys(m)


def _submitted_workload(m: Message[DeadLettered]) -> str | None:
    """The workload a dead-lettered submission names, if it does (its payload as sent)."""
    if m.payload.original_type != SubmitWorkload.event_type or m.envelope.tenant_id is None:
        return None
    try:
        found = json.loads(m.payload.data).get("workload_id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _dead_letter_keys(m: Message[DeadLettered]) -> list[str]:
    wid, tenant = _submitted_workload(m), m.envelope.tenant_id
    return [op_key(m.envelope.event_id), *([workload_key(tenant, wid)] if wid and tenant else [])]


def build_dead_letters(runtime: ServiceRuntime) -> None:
    """A command its owner gave up on (dead-lettered: it could not be decoded, it failed
    on every delivery, or the owner refused it) fails the operation that follows it, and
    a submission the workload it named, with the reason; neither stays pending for good."""

    async def dead_lettered(msg: Message[DeadLettered], tx: Transaction) -> None:
        p = msg.payload
        why = f"{p.group} could not apply it ({p.kind}): {p.reason}"
        await settle(tx, msg.envelope.event_id, "failed", why, "dead_lettered")
        wid, tenant = _submitted_workload(msg), msg.envelope.tenant_id
        if wid is None or tenant is None:
            return
        doc = await tx.get(workload_key(tenant, wid))
        if doc is not None and doc.get("status") == "submitted":
            await tx.put(workload_key(tenant, wid), {**doc, "status": "rejected", "code": "failed", "reason": why})

    for stream, owner in (
        (INVENTORY_COMMANDS, "inventory"),
        (SCHEDULING_COMMANDS, "scheduling"),
        (BILLING_COMMANDS, "billing"),
    ):
        runtime.on_dead_letters(stream, owner, dead_lettered, prefetch=_dead_letter_keys)


def build_projections(runtime: ServiceRuntime) -> None:
    build_operations(runtime)
    build_dead_letters(runtime)

    @runtime.on(PriceCatalogPublished, prefetch=lambda m: [CATALOG, *_op_keys(m)])
    async def catalog(msg: Message[PriceCatalogPublished], tx: Transaction) -> None:
        await settle(tx, msg.envelope.causation_id, "done", f"catalog version {msg.payload.version} published")
        p = msg.payload
        doc = dict(await tx.get(CATALOG) or {"versions": []})
        if any(v["version"] == p.version for v in doc["versions"]):
            return
        version = {
            "version": p.version,
            "effective_at": p.effective_at.isoformat(),
            "currency": p.currency,
            "prices": [[r.sku, r.region, r.price_class, str(r.per_gpu_hour)] for r in p.prices],
        }
        await tx.put(CATALOG, {"versions": [*doc["versions"], version]})

    async def update(tx: Transaction, msg: Message[Any], changes: dict[str, Any] | Any) -> None:
        """Apply ``changes`` (or ``changes(document)``, for changes that depend on it) to
        the workload's document."""
        tenant = msg.envelope.tenant_id
        if tenant is None:
            return
        key = workload_key(tenant, msg.payload.workload_id)
        doc = dict(await tx.get(key) or {"workload_id": msg.payload.workload_id, "status": "submitted"})
        if callable(changes):
            changes = changes(doc)
        # Events of one workload can arrive in any order across redeliveries: a later
        # status never goes back (queued after started is old news).
        order = {"submitted": 0, "accepted": 1, "queued": 2, "rejected": 9, "running": 3, "ended": 9}
        new = changes.get("status")
        if (
            new is not None
            and order.get(new, 0) < order.get(doc["status"], 0)
            and not (
                doc["status"] == "running" and new == "queued"  # requeued after a fault or drain
            )
        ):
            changes = {k: v for k, v in changes.items() if k != "status"}
        doc.update(changes)
        await tx.put(key, doc)

    @runtime.on(WorkloadAccepted, prefetch=_workload_keys)
    async def accepted(msg: Message[WorkloadAccepted], tx: Transaction) -> None:
        p = msg.payload
        spec = {k: getattr(p, k) for k in ("name", "kind", "sku", "gpus_per_node", "nodes", "region", "price_class")}
        tenant = msg.envelope.tenant_id
        # The API lists a workload when it creates the document; only one this fact
        # creates is listed here. Listing it again would move it in the index, and a
        # client paging through it would see it twice (or miss another).
        new = tenant is not None and await tx.get(workload_key(tenant, p.workload_id)) is None
        await update(tx, msg, {"status": "accepted", **spec, "submitted_at": msg.envelope.occurred_at.isoformat()})
        if tenant is not None and new:
            tx.zadd(workloads_key(tenant), p.workload_id, msg.envelope.occurred_at.timestamp())

    @runtime.on(WorkloadRejected, prefetch=_workload_keys)
    async def rejected(msg: Message[WorkloadRejected], tx: Transaction) -> None:
        p = msg.payload
        await update(tx, msg, {"status": "rejected", "code": p.code, "reason": p.reason})

    @runtime.on(WorkloadQueued, prefetch=_workload_keys)
    async def queued(msg: Message[WorkloadQueued], tx: Transaction) -> None:
        p = msg.payload

        def changes(doc: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {"status": "queued", "pending_code": p.code, "pending_reason": p.reason}
            if doc["status"] == "running":
                # Interrupted (spot preemption, GPU fault, drain): counted by cause.
                counts = dict(doc.get("interruptions", {}))
                counts[p.code] = counts.get(p.code, 0) + 1
                out["interruptions"] = counts
            return out

        await update(tx, msg, changes)

    @runtime.on(AllocationPlaced, prefetch=_slice_keys)
    async def placed(msg: Message[AllocationPlaced], tx: Transaction) -> None:
        p = msg.payload
        for s in p.gpus:
            await _host(tx, s.host_id, lambda h, s=s: h["busy"].__setitem__(p.allocation_id, s.gpu_indices))
        if msg.envelope.tenant_id is not None:
            tx.hset(allocations_key(msg.envelope.tenant_id), p.allocation_id, p.workload_id)
        allocation = {
            "allocation_id": p.allocation_id,
            "sku": p.sku,
            "region": p.region,
            "gpus": p.gpu_count,
            "hosts": [s.host_id for s in p.gpus],
            "started_at": p.started_at.isoformat(),
        }
        await update(tx, msg, {"allocation": allocation})

    @runtime.on(WorkloadStarted, prefetch=_workload_keys)
    async def started(msg: Message[WorkloadStarted], tx: Transaction) -> None:
        at = msg.payload.started_at.isoformat()

        def changes(doc: dict[str, Any]) -> dict[str, Any]:
            first = {} if "first_started_at" in doc else {"first_started_at": at}
            return {"status": "running", "pending_code": "", "pending_reason": "", "started_at": at, **first}

        await update(tx, msg, changes)

    @runtime.on(WorkloadEnded, prefetch=_workload_keys)
    async def ended(msg: Message[WorkloadEnded], tx: Transaction) -> None:
        p = msg.payload
        await update(
            tx, msg, {"status": "ended", "outcome": p.outcome, "reason": p.reason, "ended_at": p.ended_at.isoformat()}
        )

    @runtime.on(AllocationCharged, prefetch=_workload_keys)
    async def charged(msg: Message[AllocationCharged], tx: Transaction) -> None:
        p = msg.payload
        charge = {
            "allocation_id": p.allocation_id,
            "gpu_seconds": p.gpu_seconds,
            "minimum_gpu_seconds": p.minimum_gpu_seconds,
            "amount": str(p.amount),
            "currency": p.currency,
        }
        await update(tx, msg, {"charge": charge})

    @runtime.on(AllocationReleased, prefetch=lambda m: [host_key(s.host_id) for s in m.payload.gpus])
    async def released(msg: Message[AllocationReleased], tx: Transaction) -> None:
        p = msg.payload
        for s in p.gpus:
            await _host(tx, s.host_id, lambda h: h["busy"].pop(p.allocation_id, None), create=False)


async def _host(tx: Transaction, host_id: str, change: Any, create: bool = True) -> None:
    """Apply ``change`` to a host's document (made if events about it come first)."""
    key = host_key(host_id)
    doc = await tx.get(key)
    if doc is None:
        if not create:
            return
        doc = {"host_id": host_id, "state": "unknown", "faulted": [], "busy": {}}
        tx.sadd(HOSTS, host_id)
    doc = {**doc, "busy": dict(doc["busy"]), "faulted": list(doc["faulted"])}
    change(doc)
    await tx.put(key, doc)


async def settle(tx: Transaction, command_id: str | None, status: str, message: str, code: str = "") -> None:
    """Record how an operator's command ended, if the gateway is following it."""
    if command_id is None:
        return
    key = op_key(command_id)
    doc = await tx.get(key)
    if doc is None or doc.get("status") != "pending":
        return
    await tx.put(key, {**doc, "status": status, "message": message, "code": code})


def build_operations(runtime: ServiceRuntime) -> None:
    """Inventory's hosts and billing's accounts and invoices, as the API shows them."""

    def newer(doc: dict[str, Any] | None, generation: int) -> bool:
        return doc is None or int(doc.get("generation", 0)) < generation

    @runtime.on(HostRegistered, prefetch=lambda m: [host_key(m.payload.host_id), *_op_keys(m)])
    async def registered(msg: Message[HostRegistered], tx: Transaction) -> None:
        p = msg.payload
        await settle(tx, msg.envelope.causation_id, "done", f"host {p.host_id} registered")
        if not newer(await tx.get(host_key(p.host_id)), p.generation):
            return
        place = {k: getattr(p, k) for k in ("region", "zone", "rack", "nvlink_domain", "sku")}

        def apply(h: dict[str, Any]) -> None:
            h.update(place, gpus=len(p.gpu_ids), generation=p.generation)
            if h["state"] == "unknown":
                h["state"] = "active"

        await _host(tx, p.host_id, apply)

    def on_host_event(event: type[Any], what: str, change: Any) -> None:
        @runtime.on(event, prefetch=lambda m: [host_key(m.payload.host_id), *_op_keys(m)])
        async def handler(msg: Message[Any], tx: Transaction) -> None:
            p = msg.payload
            await settle(tx, msg.envelope.causation_id, "done", f"host {p.host_id} {what}")
            doc = await tx.get(host_key(p.host_id))
            if not newer(doc, p.generation):
                return

            def apply(h: dict[str, Any]) -> None:
                change(h, p)
                h["generation"] = p.generation

            await _host(tx, p.host_id, apply)

    on_host_event(HostDrained, "drained", lambda h, p: h.update(state="draining", drain_reason=p.reason))
    on_host_event(HostUndrained, "undrained", lambda h, p: h.update(state="active", drain_reason=""))
    on_host_event(HostDecommissioned, "decommissioned", lambda h, p: h.update(state="decommissioned"))
    on_host_event(
        GpuFaulted,
        "GPU fault recorded",
        lambda h, p: h.update(faulted=sorted({*h["faulted"], p.gpu_index})),
    )
    on_host_event(
        GpuFaultCleared,
        "GPU fault cleared",
        lambda h, p: h.update(faulted=[i for i in h["faulted"] if i != p.gpu_index]),
    )

    @runtime.on(
        ReservationGranted,
        prefetch=lambda m: [reservations_key(m.envelope.tenant_id or ""), *_op_keys(m)],
    )
    async def reservation_granted(msg: Message[ReservationGranted], tx: Transaction) -> None:
        p, tenant = msg.payload, msg.envelope.tenant_id
        await settle(tx, msg.envelope.causation_id, "done", f"reservation {p.reservation_id} granted")
        if tenant is None:
            return
        doc = dict(await tx.get(reservations_key(tenant)) or {"items": {}})
        row = {"reservation_id": p.reservation_id, "tenant": tenant, **p.model_dump(mode="json")}
        await tx.put(reservations_key(tenant), {"items": {**doc["items"], p.reservation_id: row}})
        tx.sadd(RESERVATION_TENANTS, tenant)

    @runtime.on(InventoryCommandRejected, prefetch=lambda m: [op_key(m.payload.command_id)])
    async def inventory_rejected(msg: Message[InventoryCommandRejected], tx: Transaction) -> None:
        p = msg.payload
        await settle(tx, p.command_id, "rejected", p.reason, p.code)

    @runtime.on(BillingCommandRejected, prefetch=_op_keys)
    async def billing_rejected(msg: Message[BillingCommandRejected], tx: Transaction) -> None:
        p = msg.payload
        await settle(tx, msg.envelope.causation_id, "rejected", p.reason, p.code)

    @runtime.on(
        InvoiceUpdated,
        prefetch=lambda m: [invoice_key(m.envelope.tenant_id, m.payload.month)] if m.envelope.tenant_id else [],
    )
    async def invoice(msg: Message[InvoiceUpdated], tx: Transaction) -> None:
        p, tenant = msg.payload, msg.envelope.tenant_id
        if tenant is None:
            return
        key = invoice_key(tenant, p.month)
        doc = await tx.get(key)
        if doc is not None and doc["revision"] >= p.revision:
            return  # a snapshot as new as this one is shown already (redelivery, reordering)
        await tx.put(key, {"tenant": tenant, **p.model_dump(mode="json")})
        tx.zadd(invoices_key(tenant), p.month, int(p.month.replace("-", "")))

    async def account(msg: Message[Any], tx: Transaction, changes: dict[str, Any]) -> None:
        tenant = msg.envelope.tenant_id
        if tenant is None:
            return
        key = account_key(tenant)
        doc = dict(await tx.get(key) or {"tenant": tenant, "alerts": []})
        at = msg.envelope.occurred_at.isoformat()
        if doc.get("as_of", "") > at:
            # Older than what is shown (redelivered or reordered): keep only its alert.
            changes = {k: v for k, v in changes.items() if k == "alerts"}
        doc.update(changes)
        doc["as_of"] = max(doc.get("as_of", ""), at)
        await tx.put(key, doc)

    @runtime.on(AccountUpdated, prefetch=lambda m: [*_account_keys(m), *_op_keys(m)])
    async def account_updated(msg: Message[AccountUpdated], tx: Transaction) -> None:
        await settle(tx, msg.envelope.causation_id, "done", f"account of {msg.envelope.tenant_id} updated")
        p = msg.payload
        changes = p.model_dump(mode="json")
        if p.month is None:
            changes = {k: v for k, v in changes.items() if k not in ("month", "month_charged")}
        await account(msg, tx, changes)

    def budget_event(msg: Message[Any], kind: str, text: str) -> dict[str, Any]:
        return {"kind": kind, "at": msg.envelope.occurred_at.isoformat(), "message": text}

    async def alert(msg: Message[Any], tx: Transaction, entry: dict[str, Any], extra: dict[str, Any]) -> None:
        tenant = msg.envelope.tenant_id
        if tenant is None:
            return
        doc = await tx.get(account_key(tenant)) or {}
        alerts = [*doc.get("alerts", []), entry][-20:]
        await account(msg, tx, {"alerts": alerts, **extra})

    @runtime.on(BudgetAlert, prefetch=_account_keys)
    async def budget_alert(msg: Message[BudgetAlert], tx: Transaction) -> None:
        p = msg.payload
        text = f"charges of {p.charged} {p.currency} in {p.month} passed the soft budget of {p.soft_budget}"
        await alert(msg, tx, budget_event(msg, "soft_budget", text), {})

    @runtime.on(BudgetExceeded, prefetch=_account_keys)
    async def budget_exceeded(msg: Message[BudgetExceeded], tx: Transaction) -> None:
        p = msg.payload
        await alert(msg, tx, budget_event(msg, "exceeded", p.reason), {"state": "blocked", "cause": p.cause})

    @runtime.on(BudgetRestored, prefetch=_account_keys)
    async def budget_restored(msg: Message[BudgetRestored], tx: Transaction) -> None:
        await alert(msg, tx, budget_event(msg, "restored", msg.payload.reason), {"state": "ok", "cause": None})
