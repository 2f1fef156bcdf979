"""Billing's snapshots as the API shows them: the catalog versions published, invoices
(the newest revision wins), accounts and their budget events."""

from __future__ import annotations

from typing import Any

from minicloud_gateway import store
from minicloud_gateway.projections.operations import op_keys, settle
from minicloud_shared.contracts import Message
from minicloud_shared.contracts.billing import (
    AccountUpdated,
    BudgetAlert,
    BudgetExceeded,
    BudgetRestored,
    InvoiceUpdated,
    PriceCatalogPublished,
)
from minicloud_shared.runtime import Transaction

ALERTS_KEPT = 20  # budget events an account shows, the newest


async def catalog(msg: Message[PriceCatalogPublished], tx: Transaction) -> None:
    await settle(tx, msg.envelope.causation_id, "done", f"catalog version {msg.payload.version} published")
    p = msg.payload
    doc = dict(await tx.get(store.CATALOG) or {"versions": []})
    if any(v["version"] == p.version for v in doc["versions"]):
        return
    version = {
        "version": p.version,
        "effective_at": p.effective_at.isoformat(),
        "currency": p.currency,
        "prices": [[r.sku, r.region, r.price_class, str(r.per_gpu_hour)] for r in p.prices],
    }
    await tx.put(store.CATALOG, {"versions": [*doc["versions"], version]})


def invoice_keys(m: Message[InvoiceUpdated]) -> list[str]:
    return [store.invoice_key(m.envelope.tenant_id, m.payload.month)] if m.envelope.tenant_id else []


async def invoice(msg: Message[InvoiceUpdated], tx: Transaction) -> None:
    p, tenant = msg.payload, msg.envelope.tenant_id
    if tenant is None:
        return
    key = store.invoice_key(tenant, p.month)
    doc = await tx.get(key)
    if doc is not None and doc["revision"] >= p.revision:
        return  # a snapshot as new as this one is shown already (redelivery, reordering)
    await tx.put(key, {"tenant": tenant, **p.model_dump(mode="json")})
    tx.zadd(store.invoices_key(tenant), p.month, int(p.month.replace("-", "")))


def account_keys(m: Message[Any]) -> list[str]:
    return [store.account_key(m.envelope.tenant_id)] if m.envelope.tenant_id is not None else []


async def _account(msg: Message[Any], tx: Transaction, changes: dict[str, Any]) -> None:
    tenant = msg.envelope.tenant_id
    if tenant is None:
        return
    key = store.account_key(tenant)
    doc = dict(await tx.get(key) or {"tenant": tenant, "alerts": []})
    at = msg.envelope.occurred_at.isoformat()
    if doc.get("as_of", "") > at:
        # Older than what is shown (redelivered or reordered): keep only its alert.
        changes = {k: v for k, v in changes.items() if k == "alerts"}
    doc.update(changes)
    doc["as_of"] = max(doc.get("as_of", ""), at)
    await tx.put(key, doc)


async def account_updated(msg: Message[AccountUpdated], tx: Transaction) -> None:
    await settle(tx, msg.envelope.causation_id, "done", f"account of {msg.envelope.tenant_id} updated")
    p = msg.payload
    changes = p.model_dump(mode="json")
    if p.month is None:
        changes = {k: v for k, v in changes.items() if k not in ("month", "month_charged")}
    await _account(msg, tx, changes)


async def _alert(msg: Message[Any], tx: Transaction, kind: str, message: str, extra: dict[str, Any]) -> None:
    tenant = msg.envelope.tenant_id
    if tenant is None:
        return
    doc = await tx.get(store.account_key(tenant)) or {}
    entry = {"kind": kind, "at": msg.envelope.occurred_at.isoformat(), "message": message}
    await _account(msg, tx, {"alerts": [*doc.get("alerts", []), entry][-ALERTS_KEPT:], **extra})


async def budget_alert(msg: Message[BudgetAlert], tx: Transaction) -> None:
    p = msg.payload
    message = f"charges of {p.charged} {p.currency} in {p.month} passed the soft budget of {p.soft_budget}"
    await _alert(msg, tx, "soft_budget", message, {})


async def budget_exceeded(msg: Message[BudgetExceeded], tx: Transaction) -> None:
    p = msg.payload
    await _alert(msg, tx, "exceeded", p.reason, {"state": "blocked", "cause": p.cause})


async def budget_restored(msg: Message[BudgetRestored], tx: Transaction) -> None:
    await _alert(msg, tx, "restored", msg.payload.reason, {"state": "ok", "cause": None})


SUBSCRIPTIONS: list[tuple[type[Any], Any, Any]] = [
    (InvoiceUpdated, invoice, invoice_keys),
    (AccountUpdated, account_updated, lambda m: [*account_keys(m), *op_keys(m)]),
    (BudgetAlert, budget_alert, account_keys),
    (BudgetExceeded, budget_exceeded, account_keys),
    (BudgetRestored, budget_restored, account_keys),
    (PriceCatalogPublished, catalog, lambda m: [store.CATALOG, *op_keys(m)]),
]
