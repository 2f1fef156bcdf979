"""Billing's handlers: load → decide → stage. Each takes the message, the transaction
and the service's dependencies (``Deps``); the rules are in ``charges``, ``accounts``
and ``invoices``, the staged changes in ``actions``, the keys in ``store``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import structlog

from minicloud_billing import actions, charges, store
from minicloud_billing.accounts import hard_stop_lapsed
from minicloud_billing.actions import CatalogCache
from minicloud_billing.metrics import BillingMetrics
from minicloud_shared.contracts import Message, decode, encode
from minicloud_shared.contracts.billing import (
    AddCredit,
    BillingCommandRejected,
    BillingTick,
    PriceCatalogPublished,
    PriceRow,
    PublishPriceCatalog,
    SetAccount,
    SetCommitment,
)
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.contracts.scheduling import AllocationPlaced
from minicloud_shared.contracts.topology import METERING_USAGE, dead_letter_stream
from minicloud_shared.logs import message_context
from minicloud_shared.pricing import CatalogVersion, month_of
from minicloud_shared.runtime import Refused, Transaction, dead_letter_entry

CLOSES_PER_TICK = 500  # invoices finalized per tick at most

log = structlog.get_logger(service=store.SERVICE)


@dataclass
class Deps:
    catalogs: CatalogCache
    grace_s: int  # a month's invoice closes at the latest this long after its end
    consumer: str  # this consumer's name, in the dead letters it writes itself
    metrics: BillingMetrics = field(default_factory=BillingMetrics)  # what is rated (build: the runtime's registry)


def _reject(tx: Transaction, msg: Message[Any], code: str, reason: str) -> None:
    tx.emit(BillingCommandRejected(command=msg.envelope.event_type, code=code, reason=reason))


# --- usage ------------------------------------------------------------------------------


async def on_placed(msg: Message[AllocationPlaced], tx: Transaction, deps: Deps) -> None:
    e, tenant = msg.payload, msg.envelope.tenant_id
    if tenant is None or await store.load_alloc(tx, e.allocation_id) is not None:
        return
    await tx.put(store.alloc_key(e.allocation_id), charges.placed(e, tenant))
    tx.sadd(store.open_key(tenant), e.allocation_id)
    seen = await store.placed_month(tx)  # read with the batch; written once a month
    if seen is None or month_of(e.started_at) > seen:
        await store.put_placed_month(tx, month_of(e.started_at))
    parked = await store.load_parked(tx, e.allocation_id)
    if not parked.records:
        return
    for held in parked.records:
        usage = decode(held["fields"])
        assert isinstance(usage.payload, UsageRecorded)  # only usage is ever parked
        try:
            await actions.rate_usage(tx, deps.catalogs, cast(Message[UsageRecorded], usage), deps.metrics)
        except Refused as refused:
            log.warning("refused held usage", reason=refused.reason, event_id=usage.envelope.event_id)
            tx.append(
                dead_letter_stream(METERING_USAGE, store.SERVICE),
                dead_letter_entry(
                    held["fields"],
                    reason=refused.reason,
                    kind="refused",
                    stream=METERING_USAGE,
                    group=store.SERVICE,
                    entry_id=held["entry_id"],
                    delivery_count=1,
                    consumer=deps.consumer,
                ),
            )
    tx.delete(store.parked_key(e.allocation_id))


async def on_usage(msg: Message[UsageRecorded], tx: Transaction, deps: Deps) -> None:
    e = msg.payload
    if await store.load_alloc(tx, e.allocation_id) is None:
        # Its placement travels on scheduling's stream and has not been read yet:
        # hold the record; the placement's handler rates (or refuses) it.
        parked = await store.load_parked(tx, e.allocation_id)
        ctx = message_context.get() or {}
        held = {"entry_id": ctx.get("entry_id", ""), "fields": encode(msg.envelope, e)}
        await tx.put(store.parked_key(e.allocation_id), parked.model_copy(update={"records": [*parked.records, held]}))
        return
    await actions.rate_usage(tx, deps.catalogs, msg, deps.metrics)


# --- the price catalog --------------------------------------------------------------------


async def on_publish(msg: Message[PublishPriceCatalog], tx: Transaction, deps: Deps) -> None:
    c = msg.payload
    catalog = await deps.catalogs.get(tx)
    newest = catalog.versions[-1]
    if any(v.version == c.version for v in catalog.versions):
        _reject(tx, msg, "duplicate_version", f"catalog version {c.version} exists; versions never change")
        return
    if c.effective_at <= newest.effective_at:
        when = f"{newest.version} ({newest.effective_at.isoformat()})"
        _reject(
            tx, msg, "bad_catalog", f"effective_at {c.effective_at.isoformat()} is not after the newest version {when}"
        )
        return
    if c.effective_at < tx.now:
        _reject(tx, msg, "bad_catalog", "a catalog version cannot take effect in the past: usage was rated already")
        return
    if c.currency != catalog.currency:
        _reject(tx, msg, "bad_catalog", f"prices are in {catalog.currency}, not {c.currency}")
        return
    # A version lists what changes; every other price carries over from the one before.
    prices: dict[tuple[str, str, str], Decimal] = dict(newest.prices)
    prices.update({(p.sku, p.region, p.price_class): p.per_gpu_hour for p in c.prices})
    version = CatalogVersion(c.version, c.effective_at, c.currency, prices)
    doc = await tx.get(store.CATALOG) or {"versions": []}
    await tx.put(store.CATALOG, {"versions": [*doc["versions"], version.to_doc()]})
    tx.after_abort(deps.catalogs.forget)
    rows = [
        PriceRow.model_validate({"sku": s, "region": r, "price_class": k, "per_gpu_hour": p})
        for (s, r, k), p in sorted(prices.items())
    ]
    tx.emit(
        PriceCatalogPublished(version=c.version, effective_at=c.effective_at, currency=c.currency, prices=rows),
        tenant_id=None,
    )


# --- accounts -----------------------------------------------------------------------------


def _tenant(tx: Transaction, msg: Message[Any]) -> str | None:
    if msg.envelope.tenant_id is None:
        _reject(tx, msg, "no_tenant", "an account command names its tenant in the envelope")
    return msg.envelope.tenant_id


async def on_set_account(msg: Message[SetAccount], tx: Transaction, deps: Deps) -> None:
    tenant, c = _tenant(tx, msg), msg.payload
    if tenant is None:
        return
    if c.soft_budget is not None and c.hard_budget is not None and c.soft_budget > c.hard_budget:
        _reject(tx, msg, "bad_budget", "the soft budget is above the hard budget")
        return
    account = await store.load_account(tx, tenant, deps.catalogs.currency)
    limits = {"credit_limit": c.credit_limit, "soft_budget": c.soft_budget, "hard_budget": c.hard_budget}
    account = account.model_copy(update={"funded": True, **limits, "alerted": ""})
    await actions.save_account(tx, deps.catalogs, account, why="the account's limits were raised")


async def on_add_credit(msg: Message[AddCredit], tx: Transaction, deps: Deps) -> None:
    tenant, c = _tenant(tx, msg), msg.payload
    if tenant is None:
        return
    account = await store.load_account(tx, tenant, deps.catalogs.currency)
    if c.reference in account.references:
        _reject(tx, msg, "duplicate_reference", f"credit {c.reference} was added already")
        return
    credited = {"funded": True, "credits": account.credits + c.amount, "references": [*account.references, c.reference]}
    account = account.model_copy(update=credited)
    await actions.save_account(tx, deps.catalogs, account, why=f"credit of {c.amount} {account.currency} added")


async def on_set_commitment(msg: Message[SetCommitment], tx: Transaction, deps: Deps) -> None:
    tenant, c = _tenant(tx, msg), msg.payload
    if tenant is None:
        return
    catalog = await deps.catalogs.get(tx)
    if catalog.versions[-1].price(c.sku, "*", "on_demand") is None:
        _reject(tx, msg, "unknown_sku", f"the catalog has no on-demand price for {c.sku}")
        return
    account = await store.load_account(tx, tenant, deps.catalogs.currency)
    commitments = {**account.commitments, c.sku: (c.gpu_hours_per_month, c.discount_pct)}
    account = account.model_copy(update={"commitments": commitments})
    await tx.put(store.account_key(tenant), account)
    await actions.account_updated(tx, account, month_of(tx.now))


# --- time ---------------------------------------------------------------------------------


async def _all_rated(tx: Transaction, tenant: str, month_end: datetime, caught_up: bool) -> bool:
    """Whether everything the tenant used before ``month_end`` is rated: every placement
    up to then has been read (one placed after it was read, or nothing is left unread:
    ``caught_up``), and every allocation open then is rated up to it."""
    seen = await store.placed_month(tx)
    if not caught_up and (seen is None or seen < month_of(month_end)):
        return False
    return all(
        a.started_at >= month_end or a.rated_until >= month_end for a in await store.open_allocations(tx, tenant)
    )


async def on_tick(msg: Message[BillingTick], tx: Transaction, deps: Deps) -> None:
    """Finalize the invoices of ended months whose usage is all rated (the watermark),
    and at the latest ``grace_s`` after the month's end; lift last month's hard budgets."""
    at = msg.payload.at
    ended = await store.ended_drafts(tx, at, CLOSES_PER_TICK)
    pairs = [store.split_name(name) for name, _ in ended]
    await tx.prefetch([store.invoice_key(t, m) for t, m in pairs] + [store.account_key(t) for t, _ in pairs])
    caught_up = await store.placements_read(tx) if pairs else False
    for (name, end), (tenant, month) in zip(ended, pairs, strict=True):
        month_end = datetime.fromtimestamp(end, UTC)
        if at.timestamp() < end + deps.grace_s and not await _all_rated(tx, tenant, month_end, caught_up):
            continue  # usage up to the month's end still in flight: wait (grace is the bound)
        tx.zrem(store.DRAFTS, name)
        await actions.close_month(tx, deps.catalogs, tenant, month)
    month = month_of(at)
    for tenant in await store.blocked_tenants(tx):
        account = await store.load_account(tx, tenant, deps.catalogs.currency)
        if hard_stop_lapsed(account, month):
            account = await actions.judge(tx, deps.catalogs, account, month, why=f"a new month ({month}) began")
            await tx.put(store.account_key(tenant), account)
    await actions.announce(tx, deps.catalogs, month)
