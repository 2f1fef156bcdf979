"""What an operator watches (the console's operator pages): the queue of every tenant,
revenue by SKU and catalog version, the dead letters of every consumer group, and the
fleet's capacity over time."""

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query

from minicloud_gateway import history
from minicloud_gateway import schemas as sc
from minicloud_gateway.deps import MONTH, Operator, State
from minicloud_gateway.identity import TENANTS
from minicloud_gateway.routes.accounts import hours
from minicloud_gateway.store import QUEUE, invoice_key, read_docs, workload_key
from minicloud_shared.contracts import text
from minicloud_shared.contracts.envelope import F_TENANT, F_TYPE
from minicloud_shared.contracts.runtime import DLQ_FIELD_PREFIX
from minicloud_shared.contracts.topology import GROUPS

router = APIRouter(tags=["operator"], responses=sc.AUTH)
QUEUE_FIELDS = (
    "workload_id",
    "status",
    "name",
    "sku",
    "skus",
    "gpus_per_node",
    "nodes",
    "region",
    "price_class",
    "priority",
    "submitted_at",
    "pending_code",
    "pending_reason",
)


@router.get("/v1/queue", response_model=sc.Queue)
async def queue(_: Operator, g: State, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict[str, Any]:
    """Every tenant's workloads waiting to be placed, longest waiting first, with why
    each waits (its pending reason)."""
    pipe = g.redis.pipeline(transaction=False)
    pipe.zrange(QUEUE, 0, limit - 1)
    pipe.zcard(QUEUE)
    members, total = await pipe.execute()
    pairs = [text(m).split("/", 1) for m in members]
    docs = await read_docs(g.redis, [workload_key(t, w) for t, w in pairs])
    now = g.clock.now()
    items = []
    for (tenant, _wid), doc in zip(pairs, docs, strict=True):
        if doc is None or doc.get("status") not in ("accepted", "queued"):
            continue  # placed or ended since the index was read
        since = doc.get("submitted_at")
        waited = int((now - datetime.fromisoformat(since)).total_seconds()) if since else 0
        items.append({"tenant": tenant, **{k: doc.get(k) for k in QUEUE_FIELDS}, "waiting_s": max(0, waited)})
    return {"items": items, "total": int(total)}


@router.get("/v1/revenue", response_model=sc.Revenue)
async def revenue(
    _: Operator, g: State, month: Annotated[str | None, Query(pattern=MONTH, description="Default: this month")] = None
) -> dict[str, Any]:
    """Charges of every tenant's invoice for a month (drafts so far, and final ones),
    by SKU, price class, catalog version and kind of line."""
    month = month or g.clock.now().strftime("%Y-%m")
    tenants = sorted(text(t) for t in await g.redis.smembers(TENANTS))
    invoices = [i for i in await read_docs(g.redis, [invoice_key(t, month) for t in tenants]) if i is not None]
    rows: dict[tuple[str, str, str, str], list[Decimal]] = {}
    statuses: dict[str, int] = {}
    total, currency = Decimal(0), None
    for inv in invoices:
        statuses[inv["status"]] = statuses.get(inv["status"], 0) + 1
        currency = currency or inv.get("currency")
        for ln in inv["lines"]:
            key = (ln.get("sku") or "-", ln.get("price_class") or "-", ln.get("catalog_version") or "", ln["kind"])
            row = rows.setdefault(key, [Decimal(0), Decimal(0)])
            row[0] += Decimal(ln.get("gpu_seconds") or 0)
            row[1] += Decimal(ln["amount"])
            total += Decimal(ln["amount"])
    items = [
        {
            "sku": sku,
            "price_class": cls,
            "catalog_version": version or None,
            "kind": kind,
            "gpu_hours": hours(secs),
            "amount": str(amount),
        }
        for (sku, cls, version, kind), (secs, amount) in sorted(rows.items())
    ]
    return {
        "month": month,
        "currency": currency,
        "total": str(total),
        "tenants": len(invoices),
        "invoices": statuses,
        "items": items,
    }


@router.get("/v1/dead-letters", response_model=sc.DeadLetters)
async def dead_letters(_: Operator, g: State, latest: Annotated[int, Query(ge=0, le=50)] = 5) -> dict[str, Any]:
    """Every consumer group's dead-letter stream: how many entries it holds and the
    newest few, with why each was given up on. Each is a message that will never take
    effect without an operator (docs/operations.md says what to do)."""
    pipe = g.redis.pipeline(transaction=False)
    for spec in GROUPS:
        pipe.xlen(spec.dead_letter_stream)
        pipe.xrevrange(spec.dead_letter_stream, count=max(latest, 1))
    found: list[Any] = await pipe.execute()
    p = DLQ_FIELD_PREFIX
    items = []
    for i, spec in enumerate(GROUPS):
        count, rows = int(found[2 * i]), found[2 * i + 1][:latest]
        shown = []
        for entry_id, raw in rows:
            f = {text(k): text(v) for k, v in raw.items()}
            shown.append(
                {
                    "entry_id": text(entry_id),
                    "type": f.get(F_TYPE),
                    "kind": f.get(f"{p}kind"),
                    "reason": f.get(f"{p}reason"),
                    "at": f.get(f"{p}at"),
                    "tenant": f.get(F_TENANT),
                }
            )
        items.append(
            {
                "stream": spec.stream,
                "group": spec.group,
                "dead_letter_stream": spec.dead_letter_stream,
                "count": count,
                "latest": shown,
            }
        )
    return {"total": sum(i["count"] for i in items), "items": items}


@router.get("/v1/capacity/history", response_model=sc.CapacityHistory)
async def capacity_history(
    _: Operator, g: State, limit: Annotated[int, Query(ge=1, le=history.KEEP)] = 1440
) -> dict[str, Any]:
    """The fleet's GPUs, allocated and free over time: the newest ``limit`` samples
    (one every ``MINICLOUD_CAPACITY_SAMPLE_S`` seconds, 60 by default), oldest first."""
    return {"every_s": g.capacity_every_s, "items": await history.read(g.redis, limit)}


ROUTERS = [router]
