"""Rating rules (P02): billing a set of usage is independent of order, unchanged by
duplicates, additive over disjoint sets, and unchanged by splitting spans at hour,
day or month boundaries — checked with hypothesis on billing's own rating code, for
every metered item: whole GPUs, GPU shares (thousandth-GPU-seconds), MIG slices
(slice-seconds), CPU-only work's
CPU (thousandth-vCPU-seconds) and memory (MiB-seconds)."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from minicloud_billing.invoices import add_piece
from minicloud_billing.records import Invoice
from minicloud_shared.pricing import Catalog, CatalogVersion, base_catalog, line_amount, money, rate

BASE = base_catalog()
CUT = CatalogVersion(
    "cut",
    datetime(2026, 12, 15, 12, 0, tzinfo=UTC),
    "USD",
    {
        **BASE.prices,
        ("h100-80gb-sxm", "*", "on_demand"): Decimal("2.39"),
        ("l40s-48gb-pcie", "*", "spot"): Decimal("0.18"),
        ("cpu", "*", "on_demand"): Decimal("0.037"),
        ("memory", "*", "spot"): Decimal("0.0013"),
    },
)
CATALOG = Catalog([BASE, CUT])
T0 = datetime(2026, 11, 28, tzinfo=UTC)

Record = tuple[str, str, str, int, datetime, datetime]  # id, sku, class, gpus, start, end

# (item, most units a second): whole GPUs, a share in thousandths, CPU in thousandths
# of a vCPU, memory in MiB.
ITEMS = [
    ("h100-80gb-sxm", 8),
    ("l40s-48gb-pcie", 8),
    ("h100-80gb-sxm:shared", 999),
    ("h100-80gb-sxm:1g.10gb", 7),
    ("cpu", 64_000),
    ("memory", 512 * 1024),
]

records = st.lists(
    st.tuples(
        st.sampled_from(ITEMS).map(lambda item: item[0]),
        st.sampled_from(["on_demand", "spot"]),
        st.integers(1, 8),
        st.integers(0, 40 * 86_400),  # start, seconds after T0 (crosses the month and the cut)
        st.integers(1, 5 * 86_400),  # duration
    ),
    min_size=1,
    max_size=25,
).map(
    lambda rows: [
        (f"u{i}", sku, cls, gpus * dict(ITEMS)[sku] // 8, T0 + timedelta(seconds=s), T0 + timedelta(seconds=s + d))
        for i, (sku, cls, gpus, s, d) in enumerate(rows)
    ]
)


def bill(recs: list[Record]) -> dict[str, Invoice]:
    """Invoices by month from records, the way billing applies them: once per usage id."""
    seen: set[str] = set()
    invoices: dict[str, Invoice] = {}
    for uid, sku, cls, gpus, start, end in recs:
        if uid in seen:
            continue
        seen.add(uid)
        for piece in rate(CATALOG, sku, "eu-1", cls, gpus, start, end):
            inv = invoices.get(piece.month) or Invoice(tenant="t", month=piece.month, currency="USD")
            invoices[piece.month] = add_piece(inv, "usage", sku, "eu-1", cls, piece)[0]
    return invoices


def quantities(invoices: dict[str, Invoice]) -> dict[tuple[str, str], int]:
    return {(m, ln.line_id): ln.gpu_seconds for m, inv in invoices.items() for ln in inv.line_list()}


def amounts(invoices: dict[str, Invoice]) -> dict[tuple[str, str], Decimal]:
    return {(m, ln.line_id): ln.amount for m, inv in invoices.items() for ln in inv.line_list()}


@settings(max_examples=200, deadline=None)
@given(records, st.randoms(use_true_random=False))
def test_order_does_not_matter(recs: list[Record], rnd: random.Random) -> None:
    shuffled = recs[:]
    rnd.shuffle(shuffled)
    a, b = bill(recs), bill(shuffled)
    assert amounts(a) == amounts(b)
    assert {m: inv.charged for m, inv in a.items()} == {m: inv.charged for m, inv in b.items()}


@settings(max_examples=200, deadline=None)
@given(records, st.data())
def test_duplicates_change_nothing(recs: list[Record], data: st.DataObject) -> None:
    copies = data.draw(st.lists(st.sampled_from(recs), max_size=20))
    assert amounts(bill(recs + copies)) == amounts(bill(recs))


@settings(max_examples=200, deadline=None)
@given(records, records)
def test_additive_over_disjoint_sets(a: list[Record], b: list[Record]) -> None:
    b = [(f"b-{r[0]}", *r[1:]) for r in b]  # disjoint ids
    both, qa, qb = quantities(bill(a + b)), quantities(bill(a)), quantities(bill(b))
    assert both == {k: qa.get(k, 0) + qb.get(k, 0) for k in qa.keys() | qb.keys()}
    # A line's amount is its whole quantity priced and rounded once: the union's line is
    # the parts' exact amounts added (as fractions) and rounded, never a sum of roundings.
    union = bill(a + b)
    for (month, line_id), q in both.items():
        price = union[month].lines[line_id].unit_price
        exact = sum(Fraction(part.get((month, line_id), 0)) * Fraction(price) / 3600 for part in (qa, qb))
        assert Fraction(q) * Fraction(price) / 3600 == exact
        assert line_amount(q, price) == money(Decimal(exact.numerator) / Decimal(exact.denominator))


@settings(max_examples=200, deadline=None)
@given(records, st.sampled_from(["hour", "day", "month"]))
def test_splitting_at_hour_day_or_month_boundaries_changes_nothing(recs: list[Record], unit: str) -> None:
    split: list[Record] = []
    for uid, sku, cls, gpus, start, end in recs:
        cuts = [c for c in _boundaries(start, end, unit) if start < c < end]
        bounds = [start, *cuts, end]
        split += [(f"{uid}.{i}", sku, cls, gpus, a, b) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    assert amounts(bill(split)) == amounts(bill(recs))
    assert quantities(bill(split)) == quantities(bill(recs))


def _boundaries(start: datetime, end: datetime, unit: str) -> list[datetime]:
    t = start.replace(minute=0, second=0, microsecond=0)
    out = []
    while t < end:
        if unit == "hour" or (unit == "day" and t.hour == 0) or (unit == "month" and t.day == 1 and t.hour == 0):
            out.append(t)
        t += timedelta(hours=1)
    return out


def test_a_span_across_the_price_cut_is_split_at_the_instant_of_the_cut() -> None:
    start, end = CUT.effective_at - timedelta(minutes=30), CUT.effective_at + timedelta(minutes=90)
    pieces = rate(CATALOG, "h100-80gb-sxm", "eu-1", "on_demand", 2, start, end)
    assert [(p.version, p.unit_price, p.gpu_seconds) for p in pieces] == [
        ("2026-01", Decimal("2.99"), 1800 * 2),
        ("cut", Decimal("2.39"), 5400 * 2),
    ]


def test_rounding_is_half_up_once_per_line() -> None:
    # 1 GPU-second of 0.018 / h is 0.000005 -> rounds to 0.00; 900 of them are 0.0045 -> 0.00;
    # 1000 of them 0.005 -> 0.01 (half up), however they were cut into records.
    assert line_amount(1, Decimal("0.018")) == Decimal("0.00")
    assert line_amount(1000, Decimal("0.018")) == Decimal("0.01")
    assert line_amount(-1000, Decimal("0.018")) == Decimal("-0.01")
