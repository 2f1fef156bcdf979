"""Pricing: the public price list and the rules that turn GPU time into money.

Pure functions, in the shared library because two services must agree on them to the
cent: billing rates usage with them, and the gateway quotes with them (a quote that
disagreed with the bill would be a broken promise). The rules (docs/billing.md says
them in words):

- **Quantity** is GPU-seconds, whole seconds (metering cuts span boundaries to the
  second), so any split of a span adds back up exactly. What else is metered has its
  own *item* and integer unit (``item_of``): a share of a GPU is metered in
  thousandth-GPU-seconds on the item ``<sku>:shared``, priced at the SKU's GPU-hour
  price / 1000 (a row for ``<sku>:shared`` per GPU-hour overrides it); CPU-only work
  in thousandth-vCPU-seconds on ``cpu`` (the catalog's ``cpu`` row per vCPU-hour /
  1000) and MiB-seconds on ``memory`` (its ``memory`` row per GiB-hour / 1024). Both
  divisions are exact in Decimal, so a unit price is never rounded.
- **Price**: the catalog version in force at each instant. A record is split where a
  new version takes effect and where a calendar month (UTC) begins; each piece is
  rated at its own version and lands on its own month's invoice.
- **Lines**: usage accumulates per (month, SKU, region, price class, catalog version).
  A line's amount is ``gpu_seconds x price_per_gpu_hour / 3600`` rounded **once**, to
  the currency's cent, half up (away from zero on a tie) — never per record. So the
  amount does not depend on how usage was cut into records, on their order, or on
  duplicates (which never reach a line: records are deduplicated by id).
- **Minimum**: an allocation the tenant ended (completed, cancelled, failed, or
  stopped at its maximum duration) is billed at least 60 seconds per GPU, at the price
  in force when it started. Allocations the cloud ended (GPU fault, drain, spot
  preemption, budget stop) pay only their seconds.
- **Commitments**: a tenant committed to ``H`` GPU-hours of a SKU per month gets
  ``discount_pct`` off the on-demand and reserved usage of that SKU the commitment
  covers: with ``U`` hours used, the share ``min(1, H / U)`` of those lines' amount.
  Hours committed and not used are charged at month end at the discounted on-demand
  price in force at the month's end (a shortfall line).
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from typing import Any

from minicloud_shared.skus import skus

CENT = Decimal("0.01")
MINIMUM_SECONDS = 60
TENANT_ENDED = frozenset({"completed", "cancelled", "failed", "max_duration"})
COVERED_CLASSES = ("on_demand", "reserved")


def money(x: Decimal) -> Decimal:
    """Round an amount to the cent, half up (away from zero on a tie): the one rounding rule."""
    return x.quantize(CENT, rounding=ROUND_HALF_UP)


def exact_amount(gpu_seconds: int, per_gpu_hour: Decimal) -> Decimal:
    return Decimal(gpu_seconds) * per_gpu_hour / Decimal(3600)


def line_amount(gpu_seconds: int, per_gpu_hour: Decimal) -> Decimal:
    """The amount of a line: its whole quantity priced, then rounded once."""
    return money(exact_amount(gpu_seconds, per_gpu_hour))


def allocation_charge(parts: Mapping[str, Sequence[Any]]) -> Decimal:
    """An allocation's charge: what it would cost on an invoice of its own. ``parts`` maps
    each invoice line it is on to its (GPU-seconds, price per GPU-hour) there; each part
    is priced and rounded like a line. So a job alone on an invoice is charged exactly
    the invoice's total, whatever its duration (docs/billing.md, "One rounding rule")."""
    return sum((line_amount(int(secs), Decimal(price)) for secs, price in parts.values()), Decimal(0))


def available_credit(funded: bool, credits: Decimal, credit_limit: Decimal, charged: Decimal) -> Decimal | None:
    """What a tenant may still be charged: credit plus credit limit minus charges, for an
    account an operator funded (its limits enforced); None for a postpaid account. The
    one definition, used by billing and shown by the gateway."""
    return money(credits + credit_limit - charged) if funded else None


def month_of(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def month_start(month: str) -> datetime:
    year, mon = (int(p) for p in month.split("-"))
    return datetime(year, mon, 1, tzinfo=UTC)


def next_month(month: str) -> str:
    year, mon = (int(p) for p in month.split("-"))
    return f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"


def _next_month_start(t: datetime) -> datetime:
    return datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)


def _month_starts_within(start: datetime, end: datetime) -> list[datetime]:
    out = []
    t = _next_month_start(start)
    while t < end:
        out.append(t)
        t = _next_month_start(t)
    return out


class Unpriced(LookupError):
    """No catalog version prices this SKU, region and class."""


SHARED = ":shared"  # the item of a GPU SKU's shares; "<sku>:<MIG profile>" is the item of its MIG slices
RESOURCE_ITEMS = ("cpu", "memory")  # priced per vCPU-hour and per GiB-hour in the catalog
_DIVISOR = {"cpu": Decimal(1000), "memory": Decimal(1024), SHARED: Decimal(1000)}


def item_of(sku: str, unit: str, mig_profile: str | None = None) -> str:
    """The item a usage record's quantity is billed as: its SKU for whole GPUs,
    ``<sku>:shared`` for shares, ``<sku>:<profile>`` for MIG slices, ``cpu`` for
    CPU-only work (its memory is ``memory``)."""
    if unit == "gpu_milli":
        return sku + SHARED
    if unit == "mig":
        return f"{sku}:{mig_profile}"
    if unit == "vcpu_milli":
        return "cpu"
    return sku


def _item_words(item: str) -> tuple[str, str]:
    """What an item's lines bill, and one unit of its quantity, in words."""
    if item.endswith(SHARED):
        return "GPU share time", "thousandth-GPU-seconds"
    if ":" in item:
        return "MIG slice time", "slice-seconds"
    return {
        "cpu": ("CPU time", "thousandth-vCPU-seconds"),
        "memory": ("memory time", "MiB-seconds"),
    }.get(item, ("GPU time", "GPU-seconds"))


def unit_text(item: str) -> str:
    """What one unit of an item's quantity is, in words (invoices say it)."""
    return _item_words(item)[1]


@dataclass(frozen=True, slots=True)
class CatalogVersion:
    version: str
    effective_at: datetime
    currency: str
    prices: dict[tuple[str, str, str], Decimal]

    def price(self, sku: str, region: str, price_class: str) -> Decimal | None:
        found = self.prices.get((sku, region, price_class))
        return found if found is not None else self.prices.get((sku, "*", price_class))

    def unit_price(self, item: str, region: str, price_class: str) -> Decimal | None:
        """The price of one hour of an item's unit: a GPU SKU's row as it is; a share
        (``<sku>:shared``) its own row or the SKU's, / 1000; a MIG slice
        (``<sku>:<profile>``) its own row, or the SKU's x its billed thousandths / 1000;
        ``cpu`` / 1000 and ``memory`` / 1024 (their rows are per vCPU-hour and GiB-hour)."""
        if item in RESOURCE_ITEMS:
            row = self.price(item, region, price_class)
            return None if row is None else row / _DIVISOR[item]
        if item.endswith(SHARED):
            row = self.price(item, region, price_class)
            if row is None:
                row = self.price(item[: -len(SHARED)], region, price_class)
            return None if row is None else row / _DIVISOR[SHARED]
        base, sep, profile = item.partition(":")
        if sep:  # a MIG slice: its own row (per slice-hour), or its SKU's x the thousandths it is billed as
            row = self.price(item, region, price_class)
            if row is not None:
                return row
            row = self.price(base, region, price_class)
            known = skus().get(base)
            mig = known.mig_profile(profile) if known is not None else None
            return None if row is None or mig is None else row * mig.billed_milli / Decimal(1000)
        return self.price(item, region, price_class)

    def to_doc(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "effective_at": self.effective_at.isoformat(),
            "currency": self.currency,
            "prices": [[s, r, c, str(p)] for (s, r, c), p in sorted(self.prices.items())],
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> CatalogVersion:
        return cls(
            version=doc["version"],
            effective_at=datetime.fromisoformat(doc["effective_at"]),
            currency=doc["currency"],
            prices={(s, r, c): Decimal(p) for s, r, c, p in doc["prices"]},
        )


@functools.cache
def base_catalog() -> CatalogVersion:
    """The price list shipped with the cloud: always the first version (read once per process)."""
    raw = json.loads(resources.files("minicloud_shared").joinpath("data/prices.json").read_text())
    return CatalogVersion(
        version=raw["version"],
        effective_at=datetime.fromisoformat(raw["effective_at"].replace("Z", "+00:00")),
        currency=raw["currency"],
        prices={(p["sku"], p["region"], p["price_class"]): Decimal(p["per_gpu_hour"]) for p in raw["prices"]},
    )


class Catalog:
    """Every version, in effective order; the first applies to anything before it too."""

    def __init__(self, versions: list[CatalogVersion]) -> None:
        self.versions = sorted(versions, key=lambda v: v.effective_at)
        self._changes = [v.effective_at for v in self.versions[1:]]

    @property
    def currency(self) -> str:
        return self.versions[0].currency

    def in_force(self, at: datetime) -> CatalogVersion:
        current = self.versions[0]
        for v in self.versions[1:]:
            if v.effective_at <= at:
                current = v
            else:
                break
        return current

    def price(self, sku: str, region: str, price_class: str, at: datetime) -> tuple[CatalogVersion, Decimal]:
        """The version in force at ``at`` and its price of one hour of the item's unit
        (``sku`` is a GPU SKU or any item of ``item_of``)."""
        v = self.in_force(at)
        p = v.unit_price(sku, region, price_class)
        if p is None:
            raise Unpriced(f"catalog {v.version} has no {price_class} price for {sku} in {region}")
        return v, p

    def cuts_within(self, start: datetime, end: datetime) -> list[datetime]:
        """Instants in ``(start, end)`` where the price or the month changes."""
        months = _month_starts_within(start, end)
        changes = [t for t in self._changes if start < t < end]
        if not changes:
            return months  # the common case: a record within one price
        return sorted({*changes, *months})


def catalog_of(doc: dict[str, Any] | None) -> Catalog:
    """The catalog in force: the base price list and every version published after it
    (``doc``: billing's catalog record, as billing and the gateway's projection keep it)."""
    return Catalog([base_catalog(), *(CatalogVersion.from_doc(v) for v in (doc or {}).get("versions", []))])


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of a record on one month's invoice at one price."""

    month: str
    version: str
    unit_price: Decimal
    start: datetime
    end: datetime
    gpu_seconds: int


def rate(
    catalog: Catalog, sku: str, region: str, price_class: str, gpus: int, start: datetime, end: datetime, sign: int = 1
) -> list[Piece]:
    """Cut ``[start, end)`` of ``gpus`` GPUs at price and month changes and price each piece."""
    if end <= start:
        return []
    bounds = [start, *catalog.cuts_within(start, end), end]
    pieces = []
    for a, b in itertools.pairwise(bounds):
        v, price = catalog.price(sku, region, price_class, a)
        seconds = int((b - a).total_seconds())
        pieces.append(Piece(month_of(a), v.version, price, a, b, sign * seconds * gpus))
    return pieces


def usage_line_id(kind: str, sku: str, region: str, price_class: str, version: str, late_from: str = "") -> str:
    line = f"{kind}|{sku}|{region}|{price_class}|{version}"
    return f"late:{late_from}|{line}" if late_from else line


@dataclass(frozen=True, slots=True)
class Line:
    line_id: str
    kind: str
    sku: str | None
    region: str | None
    price_class: str | None
    version: str | None
    unit_price: Decimal
    gpu_seconds: int
    late_from: str = ""

    @property
    def amount(self) -> Decimal:
        if self.kind == "commitment_discount":
            return -money(self.unit_price)  # the discount's amount is carried as its own "price"
        return line_amount(self.gpu_seconds, self.unit_price)

    def description(self) -> str:
        if self.kind == "commitment_discount":
            return f"committed-use discount on {self.sku}"
        if self.kind == "commitment_shortfall":
            return f"committed {self.sku} GPU-hours not used, at the discounted on-demand price"
        late = f", usage from {self.late_from} billed late" if self.late_from else ""
        item = self.sku or ""
        if item in RESOURCE_ITEMS or ":" in item:
            what, unit = _item_words(item)
            if self.kind == "minimum":
                what = f"minimum charge (60 s) of {what}"
            return f"{what}: {item} in {self.region}, {self.price_class}, catalog {self.version}, in {unit}{late}"
        what = "minimum charge (60 s per GPU)" if self.kind == "minimum" else "GPU time"
        return f"{what}: {self.sku} in {self.region}, {self.price_class}, catalog {self.version}{late}"


def commitment_lines(
    lines: Sequence[Line], month: str, commitments: Mapping[str, Sequence[Any]], catalog: Catalog, final: bool
) -> list[Line]:
    """Discount (and, when final, shortfall) lines of the tenant's commitments for
    ``month``, whose invoice has ``lines``."""
    out: list[Line] = []
    usage = [ln for ln in lines if ln.kind in ("usage", "minimum")]
    for sku, (hours, pct_raw) in sorted(commitments.items()):
        hours, pct = int(hours), Decimal(pct_raw)
        if hours <= 0:
            continue
        covered = [ln for ln in usage if ln.sku == sku and ln.price_class in COVERED_CLASSES]
        used_s = sum(ln.gpu_seconds for ln in covered)
        base = sum((ln.amount for ln in covered), Decimal(0))
        committed_s = hours * 3600
        if used_s > 0 and pct > 0:
            share = min(Decimal(1), Decimal(committed_s) / Decimal(used_s))
            discount = base * share * pct / Decimal(100)
            out.append(Line(f"commitment_discount|{sku}", "commitment_discount", sku, None, None, None, discount, 0))
        if final and used_s < committed_s:
            end = month_start(next_month(month))
            v = catalog.in_force(end)
            price = v.price(sku, "*", "on_demand")
            if price is not None:
                unit = price * (Decimal(100) - pct) / Decimal(100)
                out.append(
                    Line(
                        f"commitment_shortfall|{sku}",
                        "commitment_shortfall",
                        sku,
                        None,
                        "on_demand",
                        v.version,
                        unit,
                        committed_s - used_s,
                    )
                )
    return out


def quote(
    catalog: Catalog,
    *,
    sku: str,
    gpus: int,
    duration_s: int,
    price_class: str = "on_demand",
    region: str = "*",
    start: datetime,
) -> dict[str, Any]:
    """The price of ``gpus`` GPUs for ``duration_s`` from ``start`` (price changes included);
    ``sku`` may be any item (``item_of``), ``gpus`` then its quantity per second."""
    seconds = max(duration_s, MINIMUM_SECONDS)
    pieces = rate(catalog, sku, region, price_class, gpus, start, start + timedelta(seconds=seconds))
    by_version: dict[tuple[str, Decimal], int] = {}
    for p in pieces:
        by_version[(p.version, p.unit_price)] = by_version.get((p.version, p.unit_price), 0) + p.gpu_seconds
    parts = [
        {
            "catalog_version": v,
            "unit_price": str(price),
            "gpu_seconds": secs,
            "amount": str(line_amount(secs, price)),
        }
        for (v, price), secs in by_version.items()
    ]
    # As it would be invoiced: each part a line, rounded once (docs/billing.md).
    total = sum((line_amount(secs, price) for (_, price), secs in by_version.items()), Decimal(0))
    return {
        "sku": sku,
        "region": region,
        "price_class": price_class,
        "gpus": gpus,
        "duration_s": duration_s,
        "billed_seconds": seconds,
        "currency": catalog.currency,
        "amount": str(total),
        "parts": parts,
    }
