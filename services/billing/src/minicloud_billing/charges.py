"""An allocation's charges, pure: which usage records are refused, how a record is
cut into priced pieces, and the minimum charge when the allocation closes.

The pieces are put on invoice lines by the handler (which invoice depends on which
months are still open); the allocation's ``parts`` keep its share of each line, so
its own charge (``pricing.allocation_charge``) is what it would cost on an invoice of
its own."""

from __future__ import annotations

from dataclasses import dataclass

from minicloud_billing.records import BilledAllocation
from minicloud_shared.contracts.metering import UsageRecorded, metered_unit
from minicloud_shared.contracts.scheduling import AllocationPlaced
from minicloud_shared.pricing import MINIMUM_SECONDS, TENANT_ENDED, Catalog, Piece, month_of, rate
from minicloud_shared.runtime import Refused


@dataclass(frozen=True, slots=True)
class Priced:
    kind: str  # usage | minimum
    piece: Piece
    item: str  # what the line bills (pricing.item_of): a GPU SKU, <sku>:shared, cpu or memory


def placed(e: AllocationPlaced, tenant: str) -> BilledAllocation:
    unit, quantity = metered_unit(e.gpu_count, e.gpu_milli, e.cpu_milli, e.mig_profile)
    return BilledAllocation(
        tenant=tenant,
        workload_id=e.workload_id,
        sku=e.sku,
        region=e.region,
        price_class=e.price_class,
        gpus=quantity,
        unit=unit,
        memory_mib=e.memory_mib if unit == "vcpu_milli" else None,
        mig_profile=e.mig_profile if unit == "mig" else None,
        started_at=e.started_at,
        rated_until=e.started_at,
    )


def check(e: UsageRecorded, tenant: str | None, alloc: BilledAllocation) -> None:
    """Refuse a record that must never be charged (S04 and inconsistent records)."""
    if tenant != alloc.tenant:
        raise Refused(
            f"usage {e.usage_id} names tenant {tenant!r}, but allocation {e.allocation_id} belongs to "
            f"{alloc.tenant!r}: charged to nobody"
        )
    if (e.sku, e.region, e.price_class) != (alloc.sku, alloc.region, alloc.price_class):
        raise Refused(f"usage {e.usage_id} does not match its allocation's SKU, region or price class")
    if (e.unit, e.memory_mib, e.mig_profile) != (alloc.unit, alloc.memory_mib, alloc.mig_profile):
        raise Refused(f"usage {e.usage_id} does not match its allocation's unit or memory")
    span = int((e.end - e.start).total_seconds()) * e.gpus
    if e.gpu_seconds != (-span if e.kind == "adjustment" else span) or e.gpus != alloc.gpus:
        raise Refused(f"usage {e.usage_id}: {e.gpu_seconds} GPU-seconds do not match its span and GPUs")


def pieces(e: UsageRecorded, alloc: BilledAllocation, catalog: Catalog) -> list[Priced]:
    """The record cut at month and price changes, each piece priced (negative for an
    adjustment); one list per item the allocation is billed as (CPU-only work: its CPU,
    then its memory)."""
    sign = -1 if e.kind == "adjustment" else 1
    return [
        Priced("usage", p, item)
        for item, quantity in alloc.items()
        for p in rate(catalog, item, e.region, e.price_class, quantity, e.start, e.end, sign)
    ]


def minimum(e: UsageRecorded, alloc: BilledAllocation, catalog: Catalog) -> list[Priced]:
    """The minimum charge owed when the record closes the allocation: work its tenant
    ended before ``MINIMUM_SECONDS`` is charged up to it (per unit held: per GPU, per
    thousandth of a shared GPU, per thousandth of a vCPU and per MiB), at the start's
    price."""
    if not e.closes or alloc.closed:
        return []
    seconds = e.allocation_seconds or 0
    if e.release_reason not in TENANT_ENDED or seconds >= MINIMUM_SECONDS:
        return []
    started = alloc.started_at
    owed = []
    for item, quantity in alloc.items():
        version, price = catalog.price(item, e.region, e.price_class, started)
        piece = Piece(
            month_of(started), version.version, price, started, started, (MINIMUM_SECONDS - seconds) * quantity
        )
        owed.append(Priced("minimum", piece, item))
    return owed


def count(alloc: BilledAllocation, e: UsageRecorded) -> dict[str, object]:
    """What counting the record changes in the allocation (GPU-seconds, records, how
    far rated), as a ``model_copy`` update."""
    update: dict[str, object] = {"gpu_seconds": alloc.gpu_seconds + e.gpu_seconds, "records": alloc.records + 1}
    if e.kind != "adjustment":
        update["rated_until"] = max(alloc.rated_until, e.end)
    return update


def counted(alloc: BilledAllocation, e: UsageRecorded) -> BilledAllocation:
    """The allocation with the record counted (GPU-seconds, records, how far rated)."""
    return alloc.model_copy(update=count(alloc, e))
