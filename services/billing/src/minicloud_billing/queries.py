"""Questions about billing's records a person (or, later, the gateway) asks: the
invoice and why each line is there, the account, a quote."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from minicloud_billing import invoices
from minicloud_billing.records import Account, Invoice
from minicloud_billing.store import CATALOG, account_key, invoice_key, usage_key, why_key
from minicloud_shared.contracts import text
from minicloud_shared.pricing import Catalog, available_credit, base_catalog, catalog_of, money


async def _doc(redis: Redis, key: str) -> dict[str, Any] | None:
    data = await redis.hget(key, "d")
    return None if data is None else json.loads(data)


async def load_catalog(redis: Redis) -> Catalog:
    return catalog_of(await _doc(redis, CATALOG))


def _text(x: Decimal | None) -> str | None:
    return None if x is None else str(x)


async def _account(redis: Redis, tenant: str) -> Account:
    doc = await _doc(redis, account_key(tenant))
    return Account(tenant=tenant, currency=base_catalog().currency) if doc is None else Account.model_validate(doc)


async def account(redis: Redis, tenant: str) -> dict[str, Any]:
    a = await _account(redis, tenant)
    return {
        "tenant": tenant,
        "currency": a.currency,
        "credits": str(a.credits),
        "credit_limit": str(a.credit_limit),
        "soft_budget": None if a.soft_budget is None else str(a.soft_budget),
        "hard_budget": None if a.hard_budget is None else str(a.hard_budget),
        "charged": str(money(a.charged)),
        "available": _text(available_credit(a.funded, a.credits, a.credit_limit, a.charged)),
        "state": a.state,
        "cause": a.cause,
        "commitments": {k: {"gpu_hours_per_month": h, "discount_pct": str(p)} for k, (h, p) in a.commitments.items()},
    }


async def invoice(redis: Redis, tenant: str, month: str) -> dict[str, Any] | None:
    """The invoice (draft: current charges; or final) with its lines and total."""
    doc = await _doc(redis, invoice_key(tenant, month))
    if doc is None:
        return None
    inv = Invoice.model_validate(doc)
    lines = invoices.all_lines(inv, await _account(redis, tenant), await load_catalog(redis))
    rows = [
        {
            "line_id": ln.line_id,
            "kind": ln.kind,
            "description": ln.description(),
            "sku": ln.sku,
            "region": ln.region,
            "price_class": ln.price_class,
            "catalog_version": ln.version,
            "gpu_seconds": ln.gpu_seconds,
            "gpu_hours": str((Decimal(ln.gpu_seconds) / 3600).quantize(Decimal("0.0001"))),
            "unit_price": None if ln.kind == "commitment_discount" else str(ln.unit_price),
            "amount": str(ln.amount),
        }
        for ln in lines
    ]
    total = sum((ln.amount for ln in lines), Decimal(0))
    return {
        "invoice_id": invoices.invoice_id(tenant, month),
        "tenant": tenant,
        "month": month,
        "status": inv.status,
        "currency": inv.currency,
        "lines": rows,
        "total": str(total),
    }


async def explain(redis: Redis, tenant: str, month: str, line_id: str) -> list[dict[str, Any]]:
    """Why a line was charged: the allocations behind it, and each one's usage records."""
    raw: Any = await redis.hgetall(why_key(tenant, month))
    per_alloc: dict[str, dict[str, int]] = {}
    for k, v in raw.items():
        field = text(k)
        count = field.endswith("|n")
        base = field[:-2] if count else field
        line, _, alloc = base.rpartition("|")
        if line != line_id:
            continue
        per_alloc.setdefault(alloc, {"gpu_seconds": 0, "records": 0})["records" if count else "gpu_seconds"] = int(v)
    out = []
    for alloc, totals in sorted(per_alloc.items()):
        pieces: Any = await redis.hgetall(usage_key(alloc))
        records = []
        for k, v in pieces.items():
            piece_id = text(k)
            value = text(v)
            m, rest = value.split("|", 1)
            line, secs = rest.rsplit("|", 1)
            if m == month and line == line_id:
                usage_id, _, start = piece_id.partition("@")
                records.append({"usage_id": usage_id, "from": start, "gpu_seconds": int(secs)})
        records.sort(key=lambda r: (r["from"], r["usage_id"]))
        out.append({"allocation_id": alloc, **totals, "usage_records": records})
    return out


def render_invoice(inv: dict[str, Any] | None) -> str:
    if inv is None:
        return "no invoice"
    out = [f"{inv['invoice_id']}  {inv['status']}  {inv['currency']}", "-" * 100]
    for r in inv["lines"]:
        price = r["unit_price"] or "-"
        out.append(f"{r['description'][:60]:60} {r['gpu_hours']:>12} h x {price:>8} = {r['amount']:>12}")
    out += ["-" * 100, f"{'total':>90} {inv['total']:>9}"]
    return "\n".join(out)
