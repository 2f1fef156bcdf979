"""Billing's rules, pure: budgets and credit (accounts), an allocation's pieces and
minimum (charges), invoice lines, commitments and closing (invoices) — no Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from minicloud_billing import accounts, charges, invoices
from minicloud_billing.accounts import Alert, Lift, Stop
from minicloud_billing.records import Account, BilledAllocation, Invoice
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.pricing import Catalog, CatalogVersion, Piece, base_catalog, line_amount
from minicloud_shared.runtime import Refused

CATALOG = Catalog([base_catalog()])
H100 = "h100-80gb-sxm"
T0 = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
PRICE = CATALOG.price(H100, "eu-1", "on_demand", T0)[1]


def account(**kw: object) -> Account:
    return Account.model_validate({"tenant": "acme", "currency": "USD", **kw})


def alloc(**kw: object) -> BilledAllocation:
    fields = {
        "tenant": "acme",
        "workload_id": "wl-1",
        "sku": H100,
        "region": "eu-1",
        "price_class": "on_demand",
        "gpus": 2,
        "started_at": T0,
        "rated_until": T0,
    }
    return BilledAllocation.model_validate({**fields, **kw})


def usage(start_s: int, end_s: int, *, kind: str = "reading", gpus: int = 2, **kw: object) -> UsageRecorded:
    seconds = (end_s - start_s) * gpus
    fields = {
        "usage_id": f"a1:{start_s}",
        "allocation_id": "a1",
        "workload_id": "wl-1",
        "seq": 1,
        "kind": kind,
        "sku": H100,
        "region": "eu-1",
        "price_class": "on_demand",
        "gpus": gpus,
        "start": T0 + timedelta(seconds=start_s),
        "end": T0 + timedelta(seconds=end_s),
        "gpu_seconds": -seconds if kind == "adjustment" else seconds,
        "closes": False,
    }
    return UsageRecorded.model_validate({**fields, **kw})


# --- accounts -----------------------------------------------------------------------------


def test_a_soft_budget_alerts_once_a_month() -> None:
    a, out = accounts.evaluate(account(soft_budget=Decimal(100)), "2026-11", Decimal("100.004"))
    assert out == [Alert("2026-11", Decimal("100.00"), Decimal(100))]
    assert accounts.evaluate(a, "2026-11", Decimal(150))[1] == []
    assert accounts.evaluate(a, "2026-12", Decimal(150))[1] == [Alert("2026-12", Decimal("150.00"), Decimal(100))]


def test_a_hard_budget_stops_and_holds_for_the_month_until_the_operator_or_a_new_month() -> None:
    a, out = accounts.evaluate(account(hard_budget=Decimal(500)), "2026-11", Decimal("500.001"))
    assert [type(v) for v in out] == [Stop]
    assert (a.state, a.cause, a.blocked_month) == ("blocked", "hard_budget", "2026-11")
    assert "reached this month's hard budget of 500 USD" in out[0].reason
    # Usage credited back (work ended at the crossing) does not lift it...
    same, out = accounts.evaluate(a, "2026-11", Decimal(480))
    assert (same.state, out) == ("blocked", [])
    assert not accounts.hard_stop_lapsed(a, "2026-11")
    # ... a new month or the operator does.
    assert accounts.hard_stop_lapsed(a, "2026-12")
    lifted, out = accounts.evaluate(a, "2026-12", Decimal(0), why="a new month (2026-12) began")
    assert (lifted.state, out) == ("ok", [Lift("a new month (2026-12) began")])


def test_credit_stops_funded_accounts_only_and_lifts_when_credit_arrives() -> None:
    postpaid = account(charged=Decimal(10_000))
    assert accounts.evaluate(postpaid, "2026-11", Decimal(10_000))[1] == []
    funded = account(funded=True, credits=Decimal(50), credit_limit=Decimal(50), charged=Decimal("100.00"))
    blocked, out = accounts.evaluate(funded, "2026-11", Decimal(30))
    assert out == [Stop("credit", Decimal("100.00"), Decimal(100), out[0].reason)]
    topped = blocked.model_copy(update={"credits": Decimal(500)})
    ok, out = accounts.evaluate(topped, "2026-11", Decimal(30))
    assert (ok.state, out) == ("ok", [Lift("charges are within the limits again")])


def test_the_crossing_is_when_running_work_reached_the_limit() -> None:
    # Two GPUs at PRICE each, rated up to T0 with 90 charged: 10 more takes 10 / (2 * PRICE) hours.
    running = [alloc(rated_until=T0)]
    at = accounts.crossing(running, CATALOG, Decimal(100), Decimal(90), T0 + timedelta(hours=10))
    expected = T0 + timedelta(hours=float(Decimal(10) / (2 * PRICE)))
    assert abs((at - expected).total_seconds()) < 1
    assert accounts.crossing(running, CATALOG, Decimal(100), Decimal(90), T0 + timedelta(minutes=1)) == T0 + timedelta(
        minutes=1
    )  # never after the latest usage counted
    assert accounts.crossing([], CATALOG, Decimal(100), Decimal(90), T0) == T0


# --- charges ------------------------------------------------------------------------------


def test_a_record_for_another_tenant_or_with_wrong_seconds_is_refused() -> None:
    with pytest.raises(Refused, match="belongs to 'acme'"):
        charges.check(usage(0, 60), "mallory", alloc())
    with pytest.raises(Refused, match="do not match its span"):
        charges.check(usage(0, 60, gpu_seconds=1), "acme", alloc())
    with pytest.raises(Refused, match="SKU, region or price class"):
        charges.check(usage(0, 60, price_class="spot"), "acme", alloc())
    charges.check(usage(0, 60), "acme", alloc())


def test_a_record_across_the_month_end_is_cut_into_priced_pieces() -> None:
    pieces = charges.pieces(usage(0, 7200), alloc(), CATALOG)  # 23:00 to 01:00, Nov 30 -> Dec 1
    assert [(p.piece.month, p.piece.gpu_seconds) for p in pieces] == [("2026-11", 7200), ("2026-12", 7200)]
    adjustment = charges.pieces(usage(0, 60, kind="adjustment"), alloc(), CATALOG)
    assert [p.piece.gpu_seconds for p in adjustment] == [-120]


def test_a_share_is_billed_at_its_fraction_of_the_gpu_price() -> None:
    """250 thousandths of an H100 for an hour: 900,000 thousandth-GPU-seconds at the
    H100's price / 1000 — a quarter of a GPU-hour, rounded once."""
    share = alloc(gpus=250, unit="gpu_milli")
    (piece,) = charges.pieces(usage(0, 3600, gpus=250, unit="gpu_milli"), share, CATALOG)
    assert piece.item == H100 + ":shared"
    assert piece.piece.gpu_seconds == 900_000
    assert piece.piece.unit_price == PRICE / 1000
    assert line_amount(piece.piece.gpu_seconds, piece.piece.unit_price) == (PRICE / 4).quantize(Decimal("0.01"))
    # A 20 s share its tenant ended owes the minimum: 40 s more of its 250 thousandths.
    short = usage(0, 20, gpus=250, unit="gpu_milli", kind="final", closes=True, allocation_seconds=20)
    (owed,) = charges.minimum(short.model_copy(update={"release_reason": "completed"}), share, CATALOG)
    assert (owed.item, owed.piece.gpu_seconds) == (H100 + ":shared", 40 * 250)


def test_cpu_only_work_is_billed_per_vcpu_hour_and_gib_hour() -> None:
    """4 vCPU and 16 GiB for an hour: the catalog's cpu row x 4 plus its memory row x 16."""
    cpu_only = alloc(gpus=4000, unit="vcpu_milli", memory_mib=16 * 1024)
    rated = charges.pieces(usage(0, 3600, gpus=4000, unit="vcpu_milli", memory_mib=16 * 1024), cpu_only, CATALOG)
    assert [(p.item, p.piece.gpu_seconds) for p in rated] == [("cpu", 4000 * 3600), ("memory", 16 * 1024 * 3600)]
    cpu_row = base_catalog().price("cpu", "*", "on_demand")
    mem_row = base_catalog().price("memory", "*", "on_demand")
    assert cpu_row is not None
    assert mem_row is not None
    total = sum((line_amount(p.piece.gpu_seconds, p.piece.unit_price) for p in rated), Decimal(0))
    assert total == (cpu_row * 4).quantize(Decimal("0.01")) + (mem_row * 16).quantize(Decimal("0.01"))
    with pytest.raises(Refused, match="unit or memory"):
        charges.check(usage(0, 60, gpus=4000, unit="vcpu_milli"), "acme", cpu_only)  # its memory is missing


def test_the_minimum_is_owed_only_for_short_work_its_tenant_ended() -> None:
    short = usage(0, 20, kind="final", closes=True, allocation_seconds=20, release_reason="completed")
    (owed,) = charges.minimum(short, alloc(), CATALOG)
    assert (owed.kind, owed.piece.gpu_seconds, owed.piece.month) == ("minimum", 2 * 40, "2026-11")
    preempted = usage(0, 20, kind="final", closes=True, allocation_seconds=20, release_reason="preempted")
    assert charges.minimum(preempted, alloc(), CATALOG) == []  # the cloud's decision: no minimum
    long = usage(0, 90, kind="final", closes=True, allocation_seconds=90, release_reason="completed")
    assert charges.minimum(long, alloc(), CATALOG) == []
    assert charges.minimum(short, alloc(closed=True), CATALOG) == []  # closed already
    counted = charges.counted(alloc(), usage(0, 60))
    assert (counted.gpu_seconds, counted.records, counted.rated_until) == (120, 1, T0 + timedelta(seconds=60))


# --- invoices -----------------------------------------------------------------------------


def piece(seconds: int, month: str = "2026-11", price: Decimal = PRICE) -> Piece:
    return Piece(month, "2026-11-01", price, T0, T0, seconds)


def test_a_line_is_rounded_once_and_the_invoice_moves_by_the_rounded_change() -> None:
    inv = Invoice(tenant="acme", month="2026-11", currency="USD")
    price = Decimal("2.49")
    deltas = []
    for _ in range(3600):
        inv, line_id, delta = invoices.add_piece(inv, "usage", H100, "eu-1", "on_demand", piece(1, price=price))
        deltas.append(delta)
    ((line_id, row),) = inv.lines.items()
    assert row.gpu_seconds == 3600
    assert inv.charged == sum(deltas) == line_amount(3600, price) == Decimal("2.49")
    _, late_id, _ = invoices.add_piece(inv, "usage", H100, "eu-1", "on_demand", piece(60), late_from="2026-10")
    assert late_id == f"late:2026-10|{line_id}"


def test_closing_a_month_adds_the_commitment_discount_and_shortfall() -> None:
    inv = Invoice(tenant="acme", month="2026-11", currency="USD")
    inv, _, _ = invoices.add_piece(inv, "usage", H100, "eu-1", "on_demand", piece(10 * 3600))
    committed = account(commitments={H100: (16, Decimal(30))})
    final, lines = invoices.finalize(inv, committed, CATALOG)
    kinds = {ln.kind: ln for ln in lines}
    assert final.status == "final"
    assert kinds["commitment_discount"].amount == -(line_amount(10 * 3600, PRICE) * Decimal("0.3")).quantize(
        Decimal("0.01")
    )
    assert kinds["commitment_shortfall"].gpu_seconds == 6 * 3600
    assert final.total == sum(ln.amount for ln in lines)
    assert set(final.lines) == {ln.line_id for ln in lines}  # a final invoice stores every line


def test_the_snapshot_explains_each_line_by_its_largest_allocations() -> None:
    inv = Invoice(tenant="acme", month="2026-11", currency="USD")
    inv, line_id, _ = invoices.add_piece(inv, "usage", H100, "eu-1", "on_demand", piece(300))
    why = {f"{line_id}|a1": 100, f"{line_id}|a1|n": 2, f"{line_id}|a2": 200, f"{line_id}|a2|n": 1}
    snap = invoices.snapshot(inv, account(), CATALOG, why, revision=7, as_of=T0, per_line=1)
    (line,) = snap.lines
    assert [(a.allocation_id, a.gpu_seconds, a.records) for a in line.allocations] == [("a2", 200, 1)]
    assert line.allocation_count == 2
    assert (snap.revision, snap.status, snap.total) == (7, "draft", line_amount(300, PRICE))


def test_invoices_stored_with_eight_slot_rows_still_read() -> None:
    stored = {
        "tenant": "acme",
        "month": "2026-11",
        "currency": "USD",
        "status": "draft",
        "lines": {"usage|x": ["usage", H100, "eu-1", "on_demand", "v1", "2.49", 3600, ""]},
        "charged": "2.49",
    }
    (ln,) = Invoice.model_validate(stored).line_list()
    assert (ln.line_id, ln.gpu_seconds, ln.unit_price, ln.amount) == ("usage|x", 3600, Decimal("2.49"), Decimal("2.49"))


def test_available_credit_has_one_definition_for_billing_and_the_gateway() -> None:
    from minicloud_shared.pricing import available_credit

    assert available_credit(False, Decimal(0), Decimal(0), Decimal(5)) is None  # postpaid
    assert available_credit(True, Decimal(0), Decimal(0), Decimal(5)) == Decimal("-5.00")  # funded with nothing
    funded = account(funded=True, credits=Decimal(100), credit_limit=Decimal(50), charged=Decimal("30.004"))
    assert available_credit(funded.funded, funded.credits, funded.credit_limit, funded.charged) == Decimal("120.00")


def test_a_mig_slice_is_billed_at_its_compute_fraction_or_its_own_row() -> None:
    """A 1g.10gb slice of an H100 for an hour: one slice-hour at the H100's price x
    143/1000 (one compute slice of seven, to the thousandth); a catalog row for the
    profile, per slice-hour, wins over the fraction."""
    mig = alloc(gpus=1, unit="mig", mig_profile="1g.10gb")
    record = usage(0, 3600, gpus=1, unit="mig", mig_profile="1g.10gb")
    (piece,) = charges.pieces(record, mig, CATALOG)
    assert piece.item == H100 + ":1g.10gb"
    assert piece.piece.gpu_seconds == 3600
    assert piece.piece.unit_price == PRICE * 143 / 1000
    assert line_amount(piece.piece.gpu_seconds, piece.piece.unit_price) == (PRICE * Decimal("0.143")).quantize(
        Decimal("0.01")
    )
    own = base_catalog().prices | {(H100 + ":1g.10gb", "*", "on_demand"): Decimal("0.55")}
    priced = Catalog([CatalogVersion("own", base_catalog().effective_at, "USD", own)])
    (piece,) = charges.pieces(record, mig, priced)
    assert piece.piece.unit_price == Decimal("0.55")
    with pytest.raises(Refused, match="unit or memory"):
        charges.check(usage(0, 60, gpus=1, unit="mig", mig_profile="2g.20gb"), "acme", mig)
