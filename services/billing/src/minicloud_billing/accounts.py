"""Budgets and credit, pure: what a tenant's charges mean for its account.

``evaluate`` compares the charges with the account's limits and returns the account
as it should be and what to announce: a soft-budget alert (once a month), a stop
(the hard budget reached, or credit and credit limit used up), or the stop lifted.
``crossing`` computes when a hard budget was reached, from the allocations still
running, so the stop can be dated to that instant whatever the metering cadence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from minicloud_billing.records import Account, BilledAllocation
from minicloud_shared.pricing import Catalog, money


@dataclass(frozen=True, slots=True)
class Alert:
    month: str
    charged: Decimal  # the month's charges, to the cent
    soft_budget: Decimal


Cause = Literal["hard_budget", "credit"]


@dataclass(frozen=True, slots=True)
class Stop:
    cause: Cause
    charged: Decimal  # what reached the limit, to the cent
    limit: Decimal
    reason: str


@dataclass(frozen=True, slots=True)
class Lift:
    reason: str


Verdict = Alert | Stop | Lift


def evaluate(account: Account, month: str, month_charged: Decimal, why: str = "") -> tuple[Account, list[Verdict]]:
    """The account after comparing its charges with its limits, and what to announce.

    ``month_charged``: its charges in ``month`` so far. ``why``: an operator's change or
    a new month, the only things that lift a hard budget's stop (the usage credited back
    when work is ended at the crossing must not lift it)."""
    out: list[Verdict] = []
    update: dict[str, object] = {}
    currency = account.currency
    soft = account.soft_budget
    if soft is not None and month_charged >= soft and account.alerted != month:
        update["alerted"] = month
        out.append(Alert(month, money(month_charged), soft))
    cause: Cause | None = None
    limit, charged = Decimal(0), money(month_charged)
    if account.hard_budget is not None and month_charged >= account.hard_budget:
        cause, limit = "hard_budget", account.hard_budget
    elif account.funded and account.charged >= account.funds:
        cause, limit, charged = "credit", account.funds, money(account.charged)
    if cause is not None and account.state != "blocked":
        update.update(state="blocked", cause=cause, blocked_month=month)
        what = "this month's hard budget" if cause == "hard_budget" else "the credit and credit limit"
        reason = f"charges of {charged} {currency} reached {what} of {limit} {currency}"
        out.append(Stop(cause, charged, limit, reason))
    elif cause is None and account.state == "blocked" and (why or account.cause != "hard_budget"):
        update.update(state="ok", cause=None)
        out.append(Lift(why or "charges are within the limits again"))
    return (account.model_copy(update=update) if update else account), out


def hard_stop_lapsed(account: Account, month: str) -> bool:
    """Whether a hard budget's stop belongs to a month before ``month`` (it holds for
    its month only)."""
    return account.cause == "hard_budget" and account.blocked_month not in (None, month)


def crossing(
    open_allocations: list[BilledAllocation], catalog: Catalog, limit: Decimal, charged: Decimal, latest: datetime
) -> datetime:
    """When the tenant's charges reached ``limit``. ``charged`` counts each open
    allocation up to the end of its last rated usage; while they run, charges grow by
    their GPUs x price a second, so the instant T where
    ``charged + sum(rate_i * (T - rated_until_i)) == limit`` is when the budget was
    reached, whatever the metering cadence (at most ``latest``)."""
    rate, weighted, earliest = Decimal(0), Decimal(0), latest
    for alloc in open_allocations:
        per_s = Decimal(0)
        for item, quantity in alloc.items():
            _, price = catalog.price(item, alloc.region, alloc.price_class, alloc.rated_until)
            per_s += Decimal(quantity) * price / 3600
        rate += per_s
        weighted += per_s * Decimal(str(alloc.rated_until.timestamp()))
        earliest = min(earliest, alloc.started_at)
    if rate == 0:
        return latest
    at = datetime.fromtimestamp(float((limit - charged + weighted) / rate), UTC)
    return min(latest, max(earliest, at))
