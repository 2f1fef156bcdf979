"""Invoices, pure: putting rated pieces on lines, the commitment lines, closing a
month, and the explained snapshot a tenant reads.

Rounding happens once per line (``pricing.line_amount`` of the line's whole
quantity); an invoice's ``charged`` is the running sum of its rounded lines, moved by
each piece by exactly how much its line's rounded amount changed."""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from minicloud_billing.records import Account, Invoice, InvoiceRow
from minicloud_shared.contracts.billing import ExplainedLine, InvoiceLine, InvoiceUpdated
from minicloud_shared.pricing import Catalog, Line, Piece, commitment_lines, line_amount, usage_line_id

LINE_ORDER = {"usage": 0, "minimum": 1, "commitment_discount": 2, "commitment_shortfall": 3}


def add_piece(
    inv: Invoice, kind: str, sku: str, region: str, price_class: str, piece: Piece, late_from: str = ""
) -> tuple[Invoice, str, Decimal]:
    """The invoice with a piece added to its line; the line id, and by how much the
    line's rounded amount changed."""
    line_id = usage_line_id(kind, sku, region, price_class, piece.version, late_from)
    row = inv.lines.get(line_id)
    before = 0 if row is None else row.gpu_seconds
    after = before + piece.gpu_seconds
    new_row = InvoiceRow(
        kind=kind,
        sku=sku,
        region=region,
        price_class=price_class,
        version=piece.version,
        unit_price=piece.unit_price,
        gpu_seconds=after,
        late_from=late_from,
    )
    delta = line_amount(after, piece.unit_price) - line_amount(before, piece.unit_price)
    updated = inv.model_copy(update={"lines": {**inv.lines, line_id: new_row}, "charged": inv.charged + delta})
    return updated, line_id, delta


def all_lines(inv: Invoice, account: Account, catalog: Catalog) -> list[Line]:
    """The invoice's lines as the tenant sees them now: a draft's with the commitment
    discount so far (a final invoice stores every line it has)."""
    lines = inv.line_list()
    if inv.status != "final":
        lines += commitment_lines(lines, inv.month, _commitments(account), catalog, final=False)
    return lines


def finalize(inv: Invoice, account: Account, catalog: Catalog) -> tuple[Invoice, list[Line]]:
    """The month closed: its commitment lines (discount and shortfall) added, its total set."""
    lines = inv.line_list()
    extra = commitment_lines(lines, inv.month, _commitments(account), catalog, final=True)
    rows = {**inv.lines, **{ln.line_id: InvoiceRow.of(ln) for ln in extra}}
    lines += extra
    total = sum((ln.amount for ln in lines), Decimal(0))
    return inv.model_copy(update={"status": "final", "lines": rows, "total": total}), lines


def invoice_line(ln: Line) -> InvoiceLine:
    return InvoiceLine(
        line_id=ln.line_id,
        kind=ln.kind,  # type: ignore[arg-type]  # a Line's kind is one of InvoiceLine's
        description=ln.description(),
        sku=ln.sku,
        region=ln.region,
        price_class=ln.price_class,
        catalog_version=ln.version,
        gpu_seconds=ln.gpu_seconds,
        unit_price=ln.unit_price if ln.kind != "commitment_discount" else Decimal(0),
        amount=ln.amount,
    )


def behind_lines(why: Mapping[str, int]) -> dict[str, dict[str, tuple[int, int]]]:
    """The allocations behind each line, from the ``why`` hash (``<line>|<allocation>``
    -> GPU-seconds, ``...|n`` -> records): line -> allocation -> (GPU-seconds, records)."""
    seconds: dict[str, dict[str, int]] = {}
    for field, value in why.items():
        if not field.endswith("|n"):
            line, _, alloc = field.rpartition("|")
            by_alloc = seconds.get(line)
            if by_alloc is None:
                by_alloc = seconds[line] = {}
            by_alloc[alloc] = value
    return {line: {a: (s, why.get(f"{line}|{a}|n", 0)) for a, s in allocs.items()} for line, allocs in seconds.items()}


def largest(allocs: Mapping[str, tuple[int, int]], n: int) -> list[tuple[str, tuple[int, int]]]:
    """The ``n`` allocations with the most GPU-seconds, the largest first (ties by id)."""
    return heapq.nsmallest(n, allocs.items(), key=lambda kv: (-kv[1][0], kv[0]))


def snapshot(
    inv: Invoice,
    account: Account,
    catalog: Catalog,
    why: Mapping[str, int],
    revision: int,
    as_of: datetime,
    per_line: int,
) -> InvoiceUpdated:
    """The invoice as it stands, each line with (at most ``per_line`` of) the
    allocations behind it, the largest first."""
    lines = all_lines(inv, account, catalog)
    behind = behind_lines(why)
    out = []
    for ln in sorted(lines, key=lambda x: (LINE_ORDER.get(x.kind, 9), x.line_id)):
        allocs = behind.get(ln.line_id, {})
        out.append(
            ExplainedLine(
                **invoice_line(ln).model_dump(),
                # Plain dicts, validated with the line in one pass (a line may list 200).
                allocations=[
                    {"allocation_id": a, "gpu_seconds": s, "records": n}  # type: ignore[misc]
                    for a, (s, n) in largest(allocs, per_line)
                ],
                allocation_count=len(allocs),
            )
        )
    return InvoiceUpdated(
        invoice_id=invoice_id(inv.tenant, inv.month),
        month=inv.month,
        status=inv.status,
        revision=revision,
        as_of=as_of,
        currency=inv.currency,
        lines=out,
        total=sum((ln.amount for ln in lines), Decimal(0)),
    )


def invoice_id(tenant: str, month: str) -> str:
    return f"inv-{tenant}-{month}"


def _commitments(account: Account) -> dict[str, tuple[int, Decimal]]:
    return account.commitments
