"""Questions about billing's records a person (or, later, the gateway) asks: the
invoice and why each line is there, the account, a quote."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from minicloud_billing.state import CATALOG, account_key, invoice_key, new_account, usage_key, why_key
from minicloud_shared.contracts import text
from minicloud_shared.pricing import (
    Catalog,
    CatalogVersion,
    base_catalog,
    commitment_lines,
    lines_of,
    money,
)


async def _doc(redis: Redis, key: str) -> dict[str, Any] | None:
    data = await redis.hget(key, "d")
    return None if data is None else json.loads(data)


async def load_catalog(redis: Redis) -> Catalog:
    doc = await _doc(redis, CATALOG) or {"versions": []}
    return Catalog([base_catalog(), *(CatalogVersion.from_doc(v) for v in doc["versions"])])


async def account(redis: Redis, tenant: str) -> dict[str, Any]:
    doc = await _doc(redis, account_key(tenant)) or new_account(tenant, base_catalog().currency)
    funds = Decimal(doc["credits"]) + Decimal(doc["credit_limit"])
    return {
        "tenant": tenant,
        "currency": doc["currency"],
        "credits": doc["credits"],
        "credit_limit": doc["credit_limit"],
        "soft_budget": doc["soft_budget"],
        "hard_budget": doc["hard_budget"],
        "charged": str(money(Decimal(doc["charged"]))),
        "available": str(money(funds - Decimal(doc["charged"]))) if doc["funded"] else None,
        "state": doc["state"],
        "cause": doc["cause"],
        "commitments": {k: {"gpu_hours_per_month": h, "discount_pct": p} for k, (h, p) in doc["commitments"].items()},
    }


async def invoice(redis: Redis, tenant: str, month: str) -> dict[str, Any] | None:
    """The invoice (draft: current charges; or final) with its lines and total."""
    doc = await _doc(redis, invoice_key(tenant, month))
    if doc is None:
        return None
    lines = lines_of(doc)
    if doc["status"] != "final":
        acct = await _doc(redis, account_key(tenant))
        lines += commitment_lines(doc, (acct or {}).get("commitments", {}), await load_catalog(redis), final=False)
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
        "invoice_id": f"inv-{tenant}-{month}",
        "tenant": tenant,
        "month": month,
        "status": doc["status"],
        "currency": doc["currency"],
        "lines": rows,
        "total": str(total),
    }


async def explain(redis: Redis, tenant: str, month: str, line_id: str) -> list[dict[str, Any]]:
    """Why a line was charged: the allocations behind it, and each one's usage records."""
    raw: Any = await redis.hgetall(why_key(tenant, month))
    per_alloc: dict[str, dict[str, int]] = {}
    for k, v in raw.items():
        field = k.decode() if isinstance(k, bytes) else k
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
            piece_id = k.decode() if isinstance(k, bytes) else k
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
