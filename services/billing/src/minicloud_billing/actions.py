"""Billing's staged changes: what rating, budgets and invoices write and emit, through
the runtime's transaction. The rules are pure (``charges``, ``accounts``,
``invoices``); this module loads what they need and stages what they decide."""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal

import structlog

from minicloud_billing import accounts, charges, invoices, store
from minicloud_billing.accounts import Alert, Lift, Stop
from minicloud_billing.metrics import BillingMetrics
from minicloud_billing.records import Account, BilledAllocation, Invoice
from minicloud_shared.contracts import Message
from minicloud_shared.contracts.billing import (
    AccountUpdated,
    AllocationCharged,
    BudgetAlert,
    BudgetExceeded,
    BudgetRestored,
    InvoiceFinalized,
)
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.pricing import (
    Catalog,
    allocation_charge,
    base_catalog,
    catalog_of,
    exact_amount,
    money,
    month_of,
    month_start,
    next_month,
)
from minicloud_shared.runtime import Transaction

SNAPSHOTS_PER_TICK = 50  # changed invoices announced (InvoiceUpdated) per tick at most
LINE_ALLOCATIONS = 200  # allocations listed per line in an InvoiceUpdated (the largest)

log = structlog.get_logger(service=store.SERVICE)


class CatalogCache:
    """The price catalog: the base one and every version published, cached per record version."""

    def __init__(self) -> None:
        self.base = base_catalog()
        self._cache: tuple[int, Catalog] | None = None

    @property
    def currency(self) -> str:
        return self.base.currency

    async def get(self, tx: Transaction) -> Catalog:
        doc = await tx.get(store.CATALOG)
        version = tx.version(store.CATALOG)
        if self._cache is None or self._cache[0] != version:
            self._cache = (version, catalog_of(doc))
        return self._cache[1]

    def forget(self) -> None:
        self._cache = None


async def invoice_for(tx: Transaction, tenant: str, month: str, currency: str) -> tuple[str, str, Invoice]:
    """The open invoice usage of ``month`` goes on: its own, or — once that is final —
    the first open one after it (the usage is then marked as billed late)."""
    late_from = ""
    target = month
    for _ in range(24):
        inv = await store.load_invoice(tx, tenant, target)
        if inv is None:
            tx.zadd(store.DRAFTS, store.dirty_name(tenant, target), month_start(next_month(target)).timestamp())
            return target, late_from, Invoice(tenant=tenant, month=target, currency=currency)
        if inv.status != "final":
            return target, late_from, inv
        late_from = month
        target = max(next_month(target), month_of(tx.now))
    raise RuntimeError(f"no open invoice for {tenant} after {month}")


async def book(
    tx: Transaction,
    tenant: str,
    currency: str,
    alloc_id: str,
    alloc: BilledAllocation,
    priced: charges.Priced,
    usage_id: str,
) -> tuple[str, str, Decimal]:
    """Put a piece on its invoice line and record why the line holds it; returns the
    month of the invoice it went on, the line, and by how much the line's rounded
    amount changed (what the account is charged for it)."""
    piece = priced.piece
    month, late_from, inv = await invoice_for(tx, tenant, piece.month, currency)
    inv, line_id, delta = invoices.add_piece(
        inv, priced.kind, priced.item, alloc.region, alloc.price_class, piece, late_from
    )
    await tx.put(store.invoice_key(tenant, month), inv)
    tx.sadd(store.DIRTY, store.dirty_name(tenant, month))
    why = store.why_key(tenant, month)
    tx.incr(why, f"{line_id}|{alloc_id}", piece.gpu_seconds)
    tx.incr(why, f"{line_id}|{alloc_id}|n", 1)
    tx.hset(
        store.usage_key(alloc_id), f"{usage_id}@{piece.start.isoformat()}", f"{month}|{line_id}|{piece.gpu_seconds}"
    )
    return month, line_id, delta


async def rate_usage(
    tx: Transaction, catalogs: CatalogCache, msg: Message[UsageRecorded], metrics: BillingMetrics | None = None
) -> None:
    """Rate one usage record onto its invoice lines; refuse it if it must not be charged.
    The allocation and the account are copied once per record, with every change."""
    e, tenant = msg.payload, msg.envelope.tenant_id
    alloc = await store.load_alloc(tx, e.allocation_id)
    assert alloc is not None
    charges.check(e, tenant, alloc)
    assert tenant is not None
    catalog = await catalogs.get(tx)
    account = await store.load_account(tx, tenant, catalogs.currency)
    months: set[str] = set()
    exact, charged = alloc.amount, account.charged
    owed = charges.minimum(e, alloc, catalog)
    update = charges.count(alloc, e)
    parts = dict(alloc.parts)
    rated = [*charges.pieces(e, alloc, catalog), *owed]
    for priced in rated:
        piece = priced.piece
        month, line_id, delta = await book(tx, tenant, account.currency, e.allocation_id, alloc, priced, e.usage_id)
        months.add(month)
        charged += delta
        exact += exact_amount(piece.gpu_seconds, piece.unit_price)
        seconds, _ = parts.get(f"{month}|{line_id}", (0, piece.unit_price))
        parts[f"{month}|{line_id}"] = (seconds + piece.gpu_seconds, piece.unit_price)
    update.update(parts=parts, amount=exact)
    if metrics is not None:
        _count(tx, metrics, alloc, e.kind, rated, catalog.currency)
    if e.closes and not alloc.closed:
        minimum = owed[0].piece.gpu_seconds if owed else 0  # of its first item (its GPUs, or its CPU)
        update.update(closed=True, minimum_gpu_seconds=minimum)
        tx.srem(store.open_key(tenant), e.allocation_id)
        tx.emit(
            AllocationCharged(
                allocation_id=e.allocation_id,
                workload_id=e.workload_id,
                gpu_seconds=alloc.gpu_seconds + e.gpu_seconds + minimum,  # as counted in ``update``
                minimum_gpu_seconds=minimum,
                amount=allocation_charge(parts),
                currency=catalog.currency,
            ),
            tenant_id=tenant,
        )
    await tx.put(store.alloc_key(e.allocation_id), alloc.model_copy(update=update))
    rated_until = account.rated_until
    if e.kind != "adjustment" and (rated_until is None or e.end > rated_until):
        # The latest instant the tenant's counted charges reach: a hard budget's stop
        # at this instant credits back nothing that was counted against it.
        rated_until = e.end
    account = account.model_copy(update={"charged": charged, "rated_until": rated_until})
    for month in sorted(months):
        account = await judge(tx, catalogs, account, month, at=account.rated_until)
    await tx.put(store.account_key(tenant), account)


def _count(
    tx: Transaction,
    metrics: BillingMetrics,
    alloc: BilledAllocation,
    record_kind: str,
    rated: list[charges.Priced],
    currency: str,
) -> None:
    """What this record rated, counted once its commit lands (``BillingMetrics``)."""

    def landed() -> None:
        for priced in rated:
            kind = "adjustment" if record_kind == "adjustment" and priced.kind == "usage" else priced.kind
            piece = priced.piece
            amount = exact_amount(piece.gpu_seconds, piece.unit_price)
            metrics.rated(priced.item, alloc.price_class, kind, piece.gpu_seconds, amount, currency)

    tx.after_commit(landed)


async def month_charged(tx: Transaction, tenant: str, month: str) -> Decimal:
    """The tenant's charges in ``month`` so far (its invoice's running sum)."""
    inv = await store.load_invoice(tx, tenant, month)
    return inv.charged if inv is not None else Decimal(0)


async def judge(
    tx: Transaction, catalogs: CatalogCache, account: Account, month: str, why: str = "", at: datetime | None = None
) -> Account:
    """Compare the tenant's charges with its limits (``accounts.evaluate``) and announce
    what changed. ``at``: when the compared charges were incurred, if not now."""
    tenant, currency = account.tenant, account.currency
    charged_in_month = await month_charged(tx, tenant, month)
    account, verdicts = accounts.evaluate(account, month, charged_in_month, why)
    for v in verdicts:
        if isinstance(v, Alert):
            tx.emit(
                BudgetAlert(month=v.month, charged=v.charged, soft_budget=v.soft_budget, currency=currency),
                tenant_id=tenant,
            )
        elif isinstance(v, Stop):
            tx.sadd(store.BLOCKED, tenant)
            latest = at if at is not None else tx.now  # event time: the latest usage counted
            reached = latest
            if v.cause == "hard_budget":
                open_allocs = await store.open_allocations(tx, tenant)
                reached = accounts.crossing(open_allocs, await catalogs.get(tx), v.limit, charged_in_month, latest)
            tx.emit(
                BudgetExceeded(
                    cause=v.cause,
                    charged=v.charged,
                    limit=v.limit,
                    currency=currency,
                    reason=v.reason,
                    reached_at=reached,
                ),
                tenant_id=tenant,
            )
        elif isinstance(v, Lift):
            tx.srem(store.BLOCKED, tenant)
            tx.emit(BudgetRestored(reason=v.reason), tenant_id=tenant)
    return account


async def save_account(tx: Transaction, catalogs: CatalogCache, account: Account, why: str) -> None:
    """An operator changed the account: re-check the limits now, store, announce."""
    month = month_of(tx.now)
    account = await judge(tx, catalogs, account, month, why=why)
    await tx.put(store.account_key(account.tenant), account)
    await account_updated(tx, account, month)


async def account_updated(
    tx: Transaction, account: Account, month: str, month_charged_so_far: Decimal | None = None
) -> None:
    """Announce the account as it stands, with its charges in ``month`` (read here
    unless given)."""
    if month_charged_so_far is None:
        month_charged_so_far = await month_charged(tx, account.tenant, month)
    tx.emit(
        AccountUpdated(
            credits=account.credits,
            credit_limit=account.credit_limit,
            soft_budget=account.soft_budget,
            hard_budget=account.hard_budget,
            charged=money(account.charged),
            currency=account.currency,
            state=account.state,
            cause=account.cause,
            month=month,
            month_charged=money(month_charged_so_far),
            funded=account.funded,
        ),
        tenant_id=account.tenant,
    )


async def close_month(tx: Transaction, catalogs: CatalogCache, tenant: str, month: str) -> None:
    """Finalize the tenant's invoice of ``month`` (if still a draft) and announce it."""
    inv = await store.load_invoice(tx, tenant, month)
    if inv is None or inv.status == "final":
        return
    account = await store.load_account(tx, tenant, catalogs.currency)
    final, lines = invoices.finalize(inv, account, await catalogs.get(tx))
    await tx.put(store.invoice_key(tenant, month), final)
    tx.sadd(store.DIRTY, store.dirty_name(tenant, month))  # announced with its explanations next
    assert final.total is not None
    tx.emit(
        InvoiceFinalized(
            invoice_id=invoices.invoice_id(tenant, month),
            month=month,
            currency=final.currency,
            lines=[invoices.invoice_line(ln) for ln in lines],
            total=final.total,
        ),
        tenant_id=tenant,
    )


async def announce(tx: Transaction, catalogs: CatalogCache, month: str) -> None:
    """InvoiceUpdated for invoices that changed since their last one (a few per tick),
    and the account of each of their tenants.

    Read without version checks (``Transaction.peek``): usage batches change these
    invoices all the time, and a checked read would refuse the tick over and over
    (each attempt costing a snapshot per invoice) while the tenants' usage waits
    behind it on the same event loop. A snapshot carries the revision it was taken
    at (a reader keeps the highest), and its "changed" mark is cleared only if the
    invoice and the account are still as read when the tick commits: one changed
    meanwhile is announced again on the next tick, so none stays announced stale."""
    names = await store.dirty_invoices(tx, SNAPSHOTS_PER_TICK)
    if not names:
        return
    pairs = [store.split_name(n) for n in names]
    tenants = sorted({t for t, _ in pairs})
    found = await tx.peek([store.invoice_key(t, m) for t, m in pairs], Invoice)
    current = dict(zip(tenants, await tx.peek([store.invoice_key(t, month) for t in tenants], Invoice), strict=True))
    peeked = dict(zip(tenants, await tx.peek([store.account_key(t) for t in tenants], Account), strict=True))
    accounts = {t: a or Account(tenant=t, currency=catalogs.currency) for t, (a, _) in peeked.items()}
    catalog = await catalogs.get(tx)
    for name, (tenant, m), (inv, revision) in zip(names, pairs, found, strict=True):
        if inv is None:
            tx.srem(store.DIRTY, name)
            continue
        # The snapshot shows the account's commitments, and the tenant's AccountUpdated
        # follows: a change to either since the peek leaves the mark for the next tick.
        guards = {store.invoice_key(tenant, m): revision, store.account_key(tenant): peeked[tenant][1]}
        tx.srem_unchanged(store.DIRTY, name, guards)
        why = await store.why(tx, tenant, m)
        snap = invoices.snapshot(inv, accounts[tenant], catalog, why, revision, tx.now, LINE_ALLOCATIONS)
        tx.emit(snap, tenant_id=tenant)
        await asyncio.sleep(0)  # a large invoice's snapshot must not hold up the other subscriptions
    for tenant in tenants:
        inv, _ = current[tenant]
        await account_updated(tx, accounts[tenant], month, inv.charged if inv is not None else Decimal(0))
