"""Billing's keys and reads: every ``mc:billing:`` key is named here (a hash tag for a
Redis Cluster, or a prefix, goes in one place). Typed loads read through the
runtime's transaction (their versions are checked at commit); the raw reads below
them are indexes that need no version check."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from redis.exceptions import ResponseError

from minicloud_billing.records import Account, BilledAllocation, Invoice, Parked
from minicloud_shared.contracts import text
from minicloud_shared.contracts.topology import SCHEDULING_EVENTS
from minicloud_shared.runtime import Transaction

SERVICE = "billing"
PREFIX = f"mc:{SERVICE}:"
CATALOG = PREFIX + "catalog"  # versioned record: every catalog version published after the base one
DRAFTS = PREFIX + "drafts"  # "tenant|month" of every draft invoice -> when the month ends (epoch s)
BLOCKED = PREFIX + "blocked"  # tenants at a hard limit
TENANTS = PREFIX + "tenants"  # every tenant billing has seen
DIRTY = PREFIX + "dirty"  # "tenant|month" of invoices changed since their last InvoiceUpdated
# {"placed_month": "YYYY-MM"}: the month of the latest placement billing has read. Once it
# is past a month, all that month's allocations are known (scheduling's stream is read in
# order). Written once a month, not per placement: no hot key on the placement path.
WATERMARK = PREFIX + "watermark"


def open_key(tenant: str) -> str:
    """Set: the tenant's allocations whose usage is not rated in full yet."""
    return f"{PREFIX}open:{tenant}"


def alloc_key(allocation_id: str) -> str:
    """An allocation as billing knows it (``records.BilledAllocation``)."""
    return f"{PREFIX}alloc:{allocation_id}"


def invoice_key(tenant: str, month: str) -> str:
    """A tenant's invoice for a month (``records.Invoice``)."""
    return f"{PREFIX}invoice:{tenant}:{month}"


def why_key(tenant: str, month: str) -> str:
    """Hash: ``<line id>|<allocation id>`` -> GPU-seconds (and ``...|n`` -> records) behind each line."""
    return f"{PREFIX}why:{tenant}:{month}"


def usage_key(allocation_id: str) -> str:
    """Hash: ``<usage id>@<piece start>`` -> ``<month>|<line id>|<GPU-seconds>`` for each piece billed of it."""
    return f"{PREFIX}usage:{allocation_id}"


def parked_key(allocation_id: str) -> str:
    """Usage records that arrived before their allocation's placement (``records.Parked``)."""
    return f"{PREFIX}parked:{allocation_id}"


def account_key(tenant: str) -> str:
    """A tenant's account (``records.Account``)."""
    return f"{PREFIX}account:{tenant}"


def dirty_name(tenant: str, month: str) -> str:
    return f"{tenant}|{month}"


def split_name(name: str) -> tuple[str, str]:
    """(tenant, month) of a ``tenant|month`` member of DRAFTS or DIRTY."""
    tenant, month = name.split("|", 1)
    return tenant, month


# --- typed records, through the transaction ---------------------------------------------


async def load_account(tx: Transaction, tenant: str, currency: str) -> Account:
    """The tenant's account; a tenant billing has no account for is postpaid, with no
    limits, until an operator sets one (and is remembered as a tenant)."""
    account = await tx.load(account_key(tenant), Account)
    if account is None:
        tx.sadd(TENANTS, tenant)
        return Account(tenant=tenant, currency=currency)
    return account


async def load_alloc(tx: Transaction, allocation_id: str) -> BilledAllocation | None:
    return await tx.load(alloc_key(allocation_id), BilledAllocation)


async def load_invoice(tx: Transaction, tenant: str, month: str) -> Invoice | None:
    return await tx.load(invoice_key(tenant, month), Invoice)


async def load_parked(tx: Transaction, allocation_id: str) -> Parked:
    return await tx.load(parked_key(allocation_id), Parked) or Parked()


async def placed_month(tx: Transaction) -> str | None:
    doc = await tx.get(WATERMARK)
    return None if doc is None else str(doc["placed_month"])


async def put_placed_month(tx: Transaction, month: str) -> None:
    await tx.put(WATERMARK, {"placed_month": month})


# --- indexes and raw reads ----------------------------------------------------------------


async def open_allocations(tx: Transaction, tenant: str) -> list[BilledAllocation]:
    """The tenant's allocations not yet rated in full."""
    members: Any = await tx.redis.smembers(open_key(tenant))
    ids = sorted(text(m) for m in members)
    await tx.prefetch([alloc_key(a) for a in ids])
    out = []
    for allocation_id in ids:
        alloc = await load_alloc(tx, allocation_id)
        if alloc is not None and not alloc.closed:
            out.append(alloc)
    return out


async def placements_read(tx: Transaction) -> bool:
    """Whether billing has read every placement published so far (its group on
    scheduling's stream has nothing unread or pending)."""
    try:
        groups: Any = await tx.redis.xinfo_groups(SCHEDULING_EVENTS)
    except ResponseError:
        return False
    mine = next((g for g in groups if text(g.get("name", b"")) == SERVICE), None)
    return mine is not None and mine.get("lag") == 0 and int(mine.get("pending", 1)) == 0


async def ended_drafts(tx: Transaction, at: datetime, limit: int) -> list[tuple[str, float]]:
    """Draft invoices whose month ended by ``at``: (``tenant|month``, month end), oldest first."""
    rows: Any = await tx.redis.zrangebyscore(DRAFTS, "-inf", at.timestamp(), start=0, num=limit, withscores=True)
    return [(text(name), float(end)) for name, end in rows]


async def blocked_tenants(tx: Transaction) -> list[str]:
    return sorted(text(t) for t in await tx.redis.smembers(BLOCKED))


async def dirty_invoices(tx: Transaction, limit: int) -> list[str]:
    """Some invoices changed since their last announcement (``tenant|month``)."""
    dirty: Any = await tx.redis.srandmember(DIRTY, limit)
    return sorted(text(d) for d in dirty or [])


async def why(tx: Transaction, tenant: str, month: str) -> dict[str, int]:
    raw: Any = await tx.redis.hgetall(why_key(tenant, month))
    return {text(k): int(v) for k, v in raw.items()}
