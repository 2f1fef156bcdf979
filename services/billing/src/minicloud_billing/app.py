"""The billing service: usage records in, charges, budgets and invoices out.

Rating rules are in ``minicloud_shared.pricing`` (and docs/billing.md). This module keeps billing's
records true under redelivery and concurrency: each usage record is rated inside the
runtime's atomic step, so its pieces reach their invoice lines exactly once (records
are deduplicated by their event id, which metering derives from the usage id), and
the tenant's account, the allocation's totals and the invoice change together or
not at all.

Ownership: billing learns which tenant owns an allocation from scheduling's
``AllocationPlaced``. A usage record for a tenant that does not own the allocation is
refused (dead-lettered with the reason, charged to nobody). A record for an
allocation billing has not seen placed yet (the placement travels on another stream)
is held in ``mc:billing:parked:<allocation>`` and rated — or refused — when the
placement arrives.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog
from redis.exceptions import ResponseError

from minicloud_billing.state import (
    BLOCKED,
    CATALOG,
    DIRTY,
    DRAFTS,
    TENANTS,
    WATERMARK,
    account_key,
    alloc_key,
    invoice_key,
    new_account,
    open_key,
    parked_key,
    usage_key,
    why_key,
)
from minicloud_shared.contracts import Message, decode, encode, text
from minicloud_shared.contracts.billing import (
    AccountUpdated,
    AddCredit,
    AllocationCharged,
    BillingCommandRejected,
    BillingTick,
    BudgetAlert,
    BudgetExceeded,
    BudgetRestored,
    ExplainedLine,
    InvoiceFinalized,
    InvoiceLine,
    InvoiceUpdated,
    LineAllocation,
    PriceCatalogPublished,
    PriceRow,
    PublishPriceCatalog,
    SetAccount,
    SetCommitment,
)
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.contracts.scheduling import AllocationPlaced
from minicloud_shared.contracts.topology import BILLING_EVENTS, METERING_USAGE, SCHEDULING_EVENTS, dead_letter_stream
from minicloud_shared.logs import message_context
from minicloud_shared.pricing import (
    MINIMUM_SECONDS,
    TENANT_ENDED,
    Catalog,
    CatalogVersion,
    Piece,
    add_to_line,
    allocation_charge,
    base_catalog,
    commitment_lines,
    exact_amount,
    lines_of,
    money,
    month_of,
    month_start,
    new_invoice,
    next_month,
    rate,
)
from minicloud_shared.runtime import Refused, ServiceRuntime, Transaction, dead_letter_entry

SERVICE = "billing"
CLOSES_PER_TICK = 500  # invoices finalized per tick at most
SNAPSHOTS_PER_TICK = 50  # changed invoices announced (InvoiceUpdated) per tick at most
LINE_ALLOCATIONS = 200  # allocations listed per line in an InvoiceUpdated (the largest)
HOT_BATCH = 500  # usage records read and committed at once (the hot path)

log = structlog.get_logger(service=SERVICE)


class Billing:
    """Handlers' shared helpers; the catalog is cached per record version."""

    def __init__(self) -> None:
        self.base = base_catalog()
        self._cache: tuple[int, Catalog] | None = None

    async def catalog(self, tx: Transaction) -> Catalog:
        doc = await tx.get(CATALOG)
        version = tx.version(CATALOG)
        if self._cache is None or self._cache[0] != version:
            published = [CatalogVersion.from_doc(v) for v in (doc or {}).get("versions", [])]
            self._cache = (version, Catalog([self.base, *published]))
        return self._cache[1]

    def forget_catalog(self) -> None:
        self._cache = None

    async def account(self, tx: Transaction, tenant: str) -> dict[str, Any]:
        doc = await tx.get(account_key(tenant))
        if doc is None:
            tx.sadd(TENANTS, tenant)
            return new_account(tenant, self.base.currency)
        return {**doc}

    async def invoice_for(self, tx: Transaction, tenant: str, month: str) -> tuple[str, str, dict[str, Any]]:
        """The open invoice usage of ``month`` goes on: its own, or — once that is final —
        the first open one after it (the usage is then marked as billed late)."""
        late_from = ""
        target = month
        for _ in range(24):
            doc = await tx.get(invoice_key(tenant, target))
            if doc is None:
                doc = new_invoice(tenant, target, self.base.currency)
                tx.zadd(DRAFTS, f"{tenant}|{target}", month_start(next_month(target)).timestamp())
                return target, late_from, doc
            if doc["status"] != "final":
                return target, late_from, {**doc, "lines": dict(doc["lines"])}
            late_from = month
            target = max(next_month(target), month_of(tx.now))
        raise RuntimeError(f"no open invoice for {tenant} after {month}")

    async def book(
        self,
        tx: Transaction,
        account: dict[str, Any],
        kind: str,
        rec: dict[str, Any],
        piece: Piece,
        usage_id: str,
    ) -> tuple[str, str]:
        """Put a piece on its invoice line; returns the invoice month and line it went to."""
        tenant = account["tenant"]
        month, late_from, inv = await self.invoice_for(tx, tenant, piece.month)
        line_id, delta = add_to_line(inv, kind, rec["sku"], rec["region"], rec["price_class"], piece, late_from)
        await tx.put(invoice_key(tenant, month), inv)
        tx.sadd(DIRTY, f"{tenant}|{month}")
        account["charged"] = str(Decimal(account["charged"]) + delta)
        why = why_key(tenant, month)
        tx.incr(why, f"{line_id}|{rec['allocation_id']}", piece.gpu_seconds)
        tx.incr(why, f"{line_id}|{rec['allocation_id']}|n", 1)
        tx.hset(
            usage_key(rec["allocation_id"]),
            f"{usage_id}@{piece.start.isoformat()}",
            f"{month}|{line_id}|{piece.gpu_seconds}",
        )
        return month, line_id

    async def placements_read(self, tx: Transaction) -> bool:
        """Whether billing has read every placement published so far (its group on
        scheduling's stream has nothing unread or pending)."""
        try:
            groups: Any = await tx.redis.xinfo_groups(SCHEDULING_EVENTS)
        except ResponseError:
            return False
        mine = next((g for g in groups if text(g.get("name", b"")) == SERVICE), None)
        return mine is not None and mine.get("lag") == 0 and int(mine.get("pending", 1)) == 0

    async def all_rated(self, tx: Transaction, tenant: str, month_end: datetime, caught_up: bool) -> bool:
        """Whether everything the tenant used before ``month_end`` is rated: every placement
        up to then has been read (one placed after it was read, or nothing is left
        unread: ``caught_up``), and every allocation open then is rated up to it."""
        seen = await tx.get(WATERMARK)
        if not caught_up and (seen is None or seen["placed_month"] < month_of(month_end)):
            return False
        for alloc, rated in await self.open_allocations(tx, tenant):
            if datetime.fromisoformat(alloc["started_at"]) < month_end and rated < month_end:
                return False
        return True

    async def open_allocations(self, tx: Transaction, tenant: str) -> list[tuple[dict[str, Any], datetime]]:
        """The tenant's allocations not yet rated in full, each with how far it is rated."""
        members: Any = await tx.redis.smembers(open_key(tenant))
        ids = sorted(text(m) for m in members)
        await tx.prefetch([alloc_key(a) for a in ids])
        out = []
        for allocation_id in ids:
            alloc = await tx.get(alloc_key(allocation_id))
            if alloc is not None and not alloc["closed"]:
                out.append((alloc, datetime.fromisoformat(alloc.get("rated_until", alloc["started_at"]))))
        return out

    async def month_charged(self, tx: Transaction, tenant: str, month: str) -> Decimal:
        """The tenant's charges in ``month`` so far (its invoice's running sum)."""
        inv = await tx.get(invoice_key(tenant, month))
        return Decimal(inv["charged"]) if inv is not None else Decimal(0)

    async def evaluate(
        self, tx: Transaction, account: dict[str, Any], month: str, why: str = "", at: datetime | None = None
    ) -> None:
        """Compare the tenant's charges with its limits; emit what changed. ``at``: when
        the charges that are compared were incurred (a usage record's end), if not now."""
        tenant = account["tenant"]
        month_charged = await self.month_charged(tx, tenant, month)
        currency = account["currency"]
        soft = account["soft_budget"]
        if soft is not None and month_charged >= Decimal(soft) and account["alerted"] != month:
            account["alerted"] = month
            tx.emit(
                BudgetAlert(month=month, charged=money(month_charged), soft_budget=Decimal(soft), currency=currency),
                tenant_id=tenant,
            )
        cause: str | None = None
        limit = Decimal(0)
        charged = money(month_charged)
        hard = account["hard_budget"]
        if hard is not None and month_charged >= Decimal(hard):
            cause, limit = "hard_budget", Decimal(hard)
        elif account["funded"]:
            funds = Decimal(account["credits"]) + Decimal(account["credit_limit"])
            if Decimal(account["charged"]) >= funds:
                cause, limit, charged = "credit", funds, money(Decimal(account["charged"]))
        if cause is not None and account["state"] != "blocked":
            account.update(state="blocked", cause=cause, blocked_month=month)
            tx.sadd(BLOCKED, tenant)
            what = "this month's hard budget" if cause == "hard_budget" else "the credit and credit limit"
            latest = at if at is not None else tx.now  # event time: the latest usage counted
            reached = (
                await self.crossing(tx, tenant, limit, month_charged, latest) if cause == "hard_budget" else latest
            )
            tx.emit(
                BudgetExceeded(
                    cause=cause,  # type: ignore[arg-type]
                    charged=charged,
                    limit=limit,
                    currency=currency,
                    reason=f"charges of {charged} {currency} reached {what} of {limit} {currency}",
                    reached_at=reached,
                ),
                tenant_id=tenant,
            )
        elif cause is None and account["state"] == "blocked" and (why or account["cause"] != "hard_budget"):
            # A hard budget's stop holds for the month: the usage credited back when the
            # work is ended at the crossing must not lift it (only the operator or a new
            # month does: ``why`` says which).
            account.update(state="ok", cause=None)
            tx.srem(BLOCKED, tenant)
            tx.emit(BudgetRestored(reason=why or "charges are within the limits again"), tenant_id=tenant)

    async def crossing(
        self, tx: Transaction, tenant: str, limit: Decimal, charged: Decimal, latest: datetime
    ) -> datetime:
        """When the tenant's charges reached ``limit``. ``charged`` counts each open
        allocation up to the end of its last rated usage; while they run, charges grow by
        their GPUs x price a second, so the instant T where
        ``charged + sum(rate_i * (T - rated_until_i)) == limit`` is when the budget was
        reached, whatever the metering cadence (at most ``latest``)."""
        catalog = await self.catalog(tx)
        rate, weighted, earliest = Decimal(0), Decimal(0), latest
        for alloc, rated in await self.open_allocations(tx, tenant):
            _, price = catalog.price(alloc["sku"], alloc["region"], alloc["price_class"], rated)
            per_s = Decimal(alloc["gpus"]) * price / 3600
            rate += per_s
            weighted += per_s * Decimal(str(rated.timestamp()))
            earliest = min(earliest, datetime.fromisoformat(alloc["started_at"]))
        if rate == 0:
            return latest
        at = datetime.fromtimestamp(float((limit - charged + weighted) / rate), UTC)
        return min(latest, max(earliest, at))

    async def rate_usage(self, tx: Transaction, msg: Message[UsageRecorded]) -> None:
        """Rate one usage record onto its invoice lines; refuse it if it must not be charged."""
        e, tenant = msg.payload, msg.envelope.tenant_id
        alloc = await tx.get(alloc_key(e.allocation_id))
        assert alloc is not None
        _check_record(e, tenant, alloc)
        assert tenant is not None
        catalog = await self.catalog(tx)
        account = await self.account(tx, tenant)
        rec = {"allocation_id": e.allocation_id, "sku": e.sku, "region": e.region, "price_class": e.price_class}
        alloc = {**alloc, "parts": dict(alloc.get("parts", {}))}
        months: set[str] = set()
        exact = Decimal(alloc["amount"])
        sign = -1 if e.kind == "adjustment" else 1

        async def book(kind: str, piece: Piece) -> None:
            month, line_id = await self.book(tx, account, kind, rec, piece, e.usage_id)
            months.add(month)
            # The allocation's share of each invoice line it is on, for its own charge.
            seconds, _ = alloc["parts"].get(f"{month}|{line_id}", (0, ""))
            alloc["parts"][f"{month}|{line_id}"] = (seconds + piece.gpu_seconds, str(piece.unit_price))

        for piece in rate(catalog, e.sku, e.region, e.price_class, e.gpus, e.start, e.end, sign):
            await book("usage", piece)
            exact += exact_amount(piece.gpu_seconds, piece.unit_price)
        alloc["gpu_seconds"] += e.gpu_seconds
        alloc["records"] += 1
        if e.kind != "adjustment":
            until = datetime.fromisoformat(alloc.get("rated_until", alloc["started_at"]))
            alloc["rated_until"] = max(until, e.end).isoformat()
        if e.closes and not alloc["closed"]:
            minimum = 0
            seconds = e.allocation_seconds or 0
            if e.release_reason in TENANT_ENDED and seconds < MINIMUM_SECONDS:
                started = datetime.fromisoformat(alloc["started_at"])
                version, price = catalog.price(e.sku, e.region, e.price_class, started)
                minimum = (MINIMUM_SECONDS - seconds) * e.gpus
                piece = Piece(month_of(started), version.version, price, started, started, minimum)
                await book("minimum", piece)
                exact += exact_amount(minimum, price)
            alloc.update(closed=True, minimum_gpu_seconds=minimum)
            tx.srem(open_key(tenant), e.allocation_id)
            tx.emit(
                AllocationCharged(
                    allocation_id=e.allocation_id,
                    workload_id=e.workload_id,
                    gpu_seconds=alloc["gpu_seconds"] + minimum,
                    minimum_gpu_seconds=minimum,
                    amount=allocation_charge(alloc["parts"]),
                    currency=catalog.currency,
                ),
                tenant_id=tenant,
            )
        alloc["amount"] = str(exact)
        await tx.put(alloc_key(e.allocation_id), alloc)
        if e.kind != "adjustment":
            # The latest instant the tenant's counted charges reach: a hard budget's stop
            # at this instant credits back nothing that was counted against it.
            rated = account.get("rated_until")
            if rated is None or e.end > datetime.fromisoformat(rated):
                account["rated_until"] = e.end.isoformat()
        rated_until: str | None = account.get("rated_until")
        for month in sorted(months):
            reached = None if rated_until is None else datetime.fromisoformat(rated_until)
            await self.evaluate(tx, account, month, at=reached)
        await tx.put(account_key(tenant), account)

    async def save_account(self, tx: Transaction, account: dict[str, Any], why: str) -> None:
        """An operator changed the account: re-check the limits now, store, announce."""
        month = month_of(tx.now)
        await self.evaluate(tx, account, month, why=why)
        await tx.put(account_key(account["tenant"]), account)
        await self.account_updated(tx, account, month)

    async def account_updated(self, tx: Transaction, account: dict[str, Any], month: str) -> None:
        """Announce the account as it stands, with its charges in ``month``."""
        month_charged = await self.month_charged(tx, account["tenant"], month)
        tx.emit(
            AccountUpdated(
                credits=Decimal(account["credits"]),
                credit_limit=Decimal(account["credit_limit"]),
                soft_budget=None if account["soft_budget"] is None else Decimal(account["soft_budget"]),
                hard_budget=None if account["hard_budget"] is None else Decimal(account["hard_budget"]),
                charged=money(Decimal(account["charged"])),
                currency=account["currency"],
                state=account["state"],
                cause=account["cause"],
                month=month,
                month_charged=money(month_charged),
            ),
            tenant_id=account["tenant"],
        )

    async def snapshot(self, tx: Transaction, tenant: str, month: str, catalog: Catalog) -> InvoiceUpdated | None:
        """The invoice as it stands, each line with the allocations behind it."""
        key = invoice_key(tenant, month)
        inv = await tx.get(key)
        if inv is None:
            return None
        lines = lines_of(inv)
        if inv["status"] != "final":
            account = await self.account(tx, tenant)
            lines += commitment_lines(inv, account["commitments"], catalog, final=False)
        raw: Any = await tx.redis.hgetall(why_key(tenant, month))
        behind: dict[str, dict[str, list[int]]] = {}
        for k, v in raw.items():
            field = text(k)
            count = field.endswith("|n")
            line, _, alloc = (field[:-2] if count else field).rpartition("|")
            behind.setdefault(line, {}).setdefault(alloc, [0, 0])[1 if count else 0] = int(v)
        out = []
        order = {"usage": 0, "minimum": 1, "commitment_discount": 2, "commitment_shortfall": 3}
        for ln in sorted(lines, key=lambda x: (order.get(x.kind, 9), x.line_id)):
            allocs = sorted(behind.get(ln.line_id, {}).items(), key=lambda kv: (-kv[1][0], kv[0]))
            out.append(
                ExplainedLine(
                    **invoice_line(ln).model_dump(),
                    allocations=[
                        LineAllocation(allocation_id=a, gpu_seconds=s, records=n)
                        for a, (s, n) in allocs[:LINE_ALLOCATIONS]
                    ],
                    allocation_count=len(allocs),
                )
            )
        return InvoiceUpdated(
            invoice_id=f"inv-{tenant}-{month}",
            month=month,
            status="final" if inv["status"] == "final" else "draft",
            revision=tx.version(key),
            as_of=tx.now,
            currency=inv["currency"],
            lines=out,
            total=sum((ln.amount for ln in lines), Decimal(0)),
        )


def _check_record(e: UsageRecorded, tenant: str | None, alloc: dict[str, Any]) -> None:
    """Refuse a record that must never be charged (S04 and inconsistent records)."""
    if tenant != alloc["tenant"]:
        raise Refused(
            f"usage {e.usage_id} names tenant {tenant!r}, but allocation {e.allocation_id} belongs to "
            f"{alloc['tenant']!r}: charged to nobody"
        )
    if (e.sku, e.region, e.price_class) != (alloc["sku"], alloc["region"], alloc["price_class"]):
        raise Refused(f"usage {e.usage_id} does not match its allocation's SKU, region or price class")
    span = int((e.end - e.start).total_seconds()) * e.gpus
    if e.gpu_seconds != (-span if e.kind == "adjustment" else span) or e.gpus != alloc["gpus"]:
        raise Refused(f"usage {e.usage_id}: {e.gpu_seconds} GPU-seconds do not match its span and GPUs")


def build(runtime: ServiceRuntime, billing: Billing | None = None) -> None:
    """Register the billing service's handlers on ``runtime``."""
    b = billing or Billing()
    runtime.own_streams(BILLING_EVENTS)
    grace = runtime.settings.invoice_grace_s

    def reject(tx: Transaction, msg: Message[Any], code: str, reason: str) -> None:
        tx.emit(BillingCommandRejected(command=msg.envelope.event_type, code=code, reason=reason))

    @runtime.on(
        AllocationPlaced,
        prefetch=lambda m: [alloc_key(m.payload.allocation_id), parked_key(m.payload.allocation_id), WATERMARK],
        batch_size=HOT_BATCH,
    )
    async def on_placed(msg: Message[AllocationPlaced], tx: Transaction) -> None:
        e, tenant = msg.payload, msg.envelope.tenant_id
        if tenant is None or await tx.get(alloc_key(e.allocation_id)) is not None:
            return
        await tx.put(
            alloc_key(e.allocation_id),
            {
                "tenant": tenant,
                "workload_id": e.workload_id,
                "sku": e.sku,
                "region": e.region,
                "price_class": e.price_class,
                "gpus": e.gpu_count,
                "started_at": e.started_at.isoformat(),
                "gpu_seconds": 0,
                "amount": "0",
                "records": 0,
                "closed": False,
                "rated_until": e.started_at.isoformat(),
            },
        )
        tx.sadd(open_key(tenant), e.allocation_id)
        seen = await tx.get(WATERMARK)  # read with the batch; written once a month
        if seen is None or month_of(e.started_at) > seen["placed_month"]:
            await tx.put(WATERMARK, {"placed_month": month_of(e.started_at)})
        parked = await tx.get(parked_key(e.allocation_id))
        if parked is None or not parked["records"]:
            return
        for held in parked["records"]:
            usage = decode(held["fields"])
            try:
                await b.rate_usage(tx, usage)  # type: ignore[arg-type]
            except Refused as refused:
                log.warning("refused held usage", reason=refused.reason, event_id=usage.envelope.event_id)
                tx.append(
                    dead_letter_stream(METERING_USAGE, SERVICE),
                    dead_letter_entry(
                        held["fields"],
                        reason=refused.reason,
                        kind="refused",
                        stream=METERING_USAGE,
                        group=SERVICE,
                        entry_id=held["entry_id"],
                        delivery_count=1,
                        consumer=runtime.consumer_name,
                    ),
                )
        tx.delete(parked_key(e.allocation_id))

    def usage_keys(m: Message[UsageRecorded]) -> list[str]:
        e, tenant = m.payload, m.envelope.tenant_id or ""
        return [
            alloc_key(e.allocation_id),
            account_key(tenant),
            CATALOG,
            invoice_key(tenant, month_of(e.start)),
            invoice_key(tenant, month_of(e.end)),
        ]

    @runtime.on(UsageRecorded, prefetch=usage_keys, batch_size=HOT_BATCH)
    async def on_usage(msg: Message[UsageRecorded], tx: Transaction) -> None:
        e = msg.payload
        if await tx.get(alloc_key(e.allocation_id)) is None:
            # Its placement travels on scheduling's stream and has not been read yet:
            # hold the record; the placement's handler rates (or refuses) it.
            parked = await tx.get(parked_key(e.allocation_id)) or {"records": []}
            ctx = message_context.get() or {}
            held = {"entry_id": ctx.get("entry_id", ""), "fields": encode(msg.envelope, e)}
            await tx.put(parked_key(e.allocation_id), {"records": [*parked["records"], held]})
            return
        await b.rate_usage(tx, msg)

    @runtime.on(PublishPriceCatalog)
    async def on_publish(msg: Message[PublishPriceCatalog], tx: Transaction) -> None:
        c = msg.payload
        catalog = await b.catalog(tx)
        newest = catalog.versions[-1]
        if any(v.version == c.version for v in catalog.versions):
            reject(tx, msg, "duplicate_version", f"catalog version {c.version} exists; versions never change")
            return
        if c.effective_at <= newest.effective_at:
            reject(
                tx,
                msg,
                "bad_catalog",
                f"effective_at {c.effective_at.isoformat()} is not after the newest version "
                f"{newest.version} ({newest.effective_at.isoformat()})",
            )
            return
        if c.effective_at < tx.now:
            reject(tx, msg, "bad_catalog", "a catalog version cannot take effect in the past: usage was rated already")
            return
        if c.currency != catalog.currency:
            reject(tx, msg, "bad_catalog", f"prices are in {catalog.currency}, not {c.currency}")
            return
        # A version lists what changes; every other price carries over from the one before.
        prices: dict[tuple[str, str, str], Decimal] = dict(newest.prices)
        prices.update({(p.sku, p.region, p.price_class): p.per_gpu_hour for p in c.prices})
        version = CatalogVersion(c.version, c.effective_at, c.currency, prices)
        doc = await tx.get(CATALOG) or {"versions": []}
        await tx.put(CATALOG, {"versions": [*doc["versions"], version.to_doc()]})
        tx.after_abort(b.forget_catalog)
        tx.emit(
            PriceCatalogPublished(
                version=c.version,
                effective_at=c.effective_at,
                currency=c.currency,
                prices=[
                    PriceRow.model_validate({"sku": s, "region": r, "price_class": k, "per_gpu_hour": p})
                    for (s, r, k), p in sorted(prices.items())
                ],
            ),
            tenant_id=None,
        )

    def tenant_of(tx: Transaction, msg: Message[Any]) -> str | None:
        if msg.envelope.tenant_id is None:
            reject(tx, msg, "no_tenant", "an account command names its tenant in the envelope")
        return msg.envelope.tenant_id

    @runtime.on(SetAccount)
    async def on_set_account(msg: Message[SetAccount], tx: Transaction) -> None:
        tenant = tenant_of(tx, msg)
        if tenant is None:
            return
        c = msg.payload
        if c.soft_budget is not None and c.hard_budget is not None and c.soft_budget > c.hard_budget:
            reject(tx, msg, "bad_budget", "the soft budget is above the hard budget")
            return
        account = await b.account(tx, tenant)
        account.update(
            funded=True,
            credit_limit=str(c.credit_limit),
            soft_budget=None if c.soft_budget is None else str(c.soft_budget),
            hard_budget=None if c.hard_budget is None else str(c.hard_budget),
            alerted="",
        )
        await b.save_account(tx, account, why="the account's limits were raised")

    @runtime.on(AddCredit)
    async def on_add_credit(msg: Message[AddCredit], tx: Transaction) -> None:
        tenant = tenant_of(tx, msg)
        if tenant is None:
            return
        c = msg.payload
        account = await b.account(tx, tenant)
        if c.reference in account["references"]:
            reject(tx, msg, "duplicate_reference", f"credit {c.reference} was added already")
            return
        account.update(
            funded=True,
            credits=str(Decimal(account["credits"]) + c.amount),
            references=[*account["references"], c.reference],
        )
        await b.save_account(tx, account, why=f"credit of {c.amount} {account['currency']} added")

    @runtime.on(SetCommitment)
    async def on_set_commitment(msg: Message[SetCommitment], tx: Transaction) -> None:
        tenant = tenant_of(tx, msg)
        if tenant is None:
            return
        c = msg.payload
        catalog = await b.catalog(tx)
        if catalog.versions[-1].price(c.sku, "*", "on_demand") is None:
            reject(tx, msg, "unknown_sku", f"the catalog has no on-demand price for {c.sku}")
            return
        account = await b.account(tx, tenant)
        account["commitments"] = {**account["commitments"], c.sku: [c.gpu_hours_per_month, str(c.discount_pct)]}
        await tx.put(account_key(tenant), account)
        await b.account_updated(tx, account, month_of(tx.now))

    @runtime.on(BillingTick)
    async def on_tick(msg: Message[BillingTick], tx: Transaction) -> None:
        """Finalize the invoices of ended months whose usage is all rated (the watermark),
        and at the latest ``grace`` after the month's end; lift last month's hard budgets."""
        at = msg.payload.at
        ended: Any = await tx.redis.zrangebyscore(
            DRAFTS, "-inf", at.timestamp(), start=0, num=CLOSES_PER_TICK, withscores=True
        )
        names = [text(d) for d, _ in ended]
        pairs = [n.split("|", 1) for n in names]
        await tx.prefetch([invoice_key(t, m) for t, m in pairs] + [account_key(t) for t, _ in pairs])
        catalog = await b.catalog(tx) if pairs else None
        caught_up = await b.placements_read(tx) if pairs else False
        for name, (tenant, month), (_, end) in zip(names, pairs, ended, strict=True):
            month_end = datetime.fromtimestamp(float(end), UTC)
            if at.timestamp() < float(end) + grace and not await b.all_rated(tx, tenant, month_end, caught_up):
                continue  # usage up to the month's end still in flight: wait (grace is the bound)
            tx.zrem(DRAFTS, name)
            inv = await tx.get(invoice_key(tenant, month))
            if inv is None or inv["status"] == "final" or catalog is None:
                continue
            account = await b.account(tx, tenant)
            extra = commitment_lines(inv, account["commitments"], catalog, final=True)
            lines = lines_of(inv) + extra
            final = {**inv, "status": "final", "lines": dict(inv["lines"])}
            for ln in extra:
                final["lines"][ln.line_id] = ln.row()
            total = sum((ln.amount for ln in lines), Decimal(0))
            final["total"] = str(total)
            await tx.put(invoice_key(tenant, month), final)
            tx.sadd(DIRTY, name)  # the final invoice is announced with its explanations next
            tx.emit(
                InvoiceFinalized(
                    invoice_id=f"inv-{tenant}-{month}",
                    month=month,
                    currency=inv["currency"],
                    lines=[invoice_line(ln) for ln in lines],
                    total=total,
                ),
                tenant_id=tenant,
            )
        blocked: Any = await tx.redis.smembers(BLOCKED)
        month = month_of(at)
        for raw in blocked:
            tenant = text(raw)
            account = await b.account(tx, tenant)
            if account["cause"] == "hard_budget" and account.get("blocked_month", month) != month:
                await b.evaluate(tx, account, month, why=f"a new month ({month}) began")
                await tx.put(account_key(tenant), account)
        await announce(tx, month)

    async def announce(tx: Transaction, month: str) -> None:
        """InvoiceUpdated for invoices that changed since their last one (a few per tick),
        and the account of each of their tenants. Read with version checks: a snapshot
        that raced a usage batch is taken again, so none is announced stale for good."""
        dirty: Any = await tx.redis.srandmember(DIRTY, SNAPSHOTS_PER_TICK)
        names = sorted(text(d) for d in dirty or [])
        if not names:
            return
        pairs = [n.split("|", 1) for n in names]
        tenants = sorted({t for t, _ in pairs})
        keys = [invoice_key(t, m) for t, m in pairs] + [account_key(t) for t in tenants]
        await tx.prefetch(keys + [invoice_key(t, month) for t in tenants])
        catalog = await b.catalog(tx)
        for name, (tenant, m) in zip(names, pairs, strict=True):
            tx.srem(DIRTY, name)
            snap = await b.snapshot(tx, tenant, m, catalog)
            if snap is not None:
                tx.emit(snap, tenant_id=tenant)
        for tenant in tenants:
            await b.account_updated(tx, await b.account(tx, tenant), month)

    runtime.every(runtime.settings.tick_s, lambda now: BillingTick(at=now))


def invoice_line(ln: Any) -> InvoiceLine:
    return InvoiceLine(
        line_id=ln.line_id,
        kind=ln.kind,
        description=ln.description(),
        sku=ln.sku,
        region=ln.region,
        price_class=ln.price_class,
        catalog_version=ln.version,
        gpu_seconds=ln.gpu_seconds,
        unit_price=ln.unit_price if ln.kind != "commitment_discount" else Decimal(0),
        amount=ln.amount,
    )
