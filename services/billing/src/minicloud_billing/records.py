"""Billing's records, typed: what is stored under ``mc:billing:`` (keys in ``store``).

Money is Decimal (stored as strings), times are aware datetimes. Records are frozen:
one changes by ``model_copy``, and the transaction shares one instance between the
handlers of a batch (``Transaction.load``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from minicloud_shared.pricing import Line, item_of


class Account(BaseModel):
    """A tenant's account: credit and limits (once an operator set them), what it was
    charged, and whether its budget stops it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    funded: bool = False  # credit and limits are enforced once an operator set them
    currency: str
    credits: Decimal = Decimal(0)
    credit_limit: Decimal = Decimal(0)
    soft_budget: Decimal | None = None
    hard_budget: Decimal | None = None
    charged: Decimal = Decimal(0)  # every charge ever, at line precision
    state: Literal["ok", "blocked"] = "ok"
    cause: Literal["hard_budget", "credit"] | None = None
    blocked_month: str | None = None  # the month a hard budget stopped it
    alerted: str = ""  # the month its soft budget was last announced
    commitments: dict[str, tuple[int, Decimal]] = Field(default_factory=dict)  # SKU -> (GPU-hours a month, discount %)
    references: list[str] = Field(default_factory=list)  # credits added, by the operator's reference
    rated_until: datetime | None = None  # the latest instant its counted charges reach

    @property
    def funds(self) -> Decimal:
        """What it may be charged in all: its credit plus its credit limit."""
        return self.credits + self.credit_limit


class BilledAllocation(BaseModel):
    """An allocation as billing knows it: its owner, what it is, what it was charged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    workload_id: str
    sku: str
    region: str
    price_class: str
    gpus: int  # what it holds, in ``unit``s (GPUs, thousandths of a GPU, thousandths of a vCPU)
    started_at: datetime
    unit: str = "gpu"
    memory_mib: int | None = None  # CPU-only work: the memory it holds, billed beside its CPU
    mig_profile: str | None = None  # a MIG slice: its profile
    gpu_seconds: int = 0
    amount: Decimal = Decimal(0)  # exact (unrounded) sum of its pieces
    records: int = 0
    closed: bool = False
    rated_until: datetime  # its usage is rated up to here
    minimum_gpu_seconds: int = 0
    # "<month>|<line id>" -> (GPU-seconds, price per GPU-hour): its share of each line.
    parts: dict[str, tuple[int, Decimal]] = Field(default_factory=dict)

    def items(self) -> list[tuple[str, int]]:
        """What it is billed as, and how many units of each a second (``pricing.item_of``)."""
        out = [(item_of(self.sku, self.unit, self.mig_profile), self.gpus)]
        if self.memory_mib:
            out.append(("memory", self.memory_mib))
        return out


class InvoiceRow(BaseModel):
    """One stored invoice line: what is billed, at what price, how much of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    sku: str | None
    region: str | None
    price_class: str | None
    version: str | None
    unit_price: Decimal
    gpu_seconds: int
    late_from: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: Any) -> Any:
        """Invoices stored before rows were named kept each as an 8-slot list."""
        if isinstance(data, list):
            names = ("kind", "sku", "region", "price_class", "version", "unit_price", "gpu_seconds", "late_from")
            return dict(zip(names, data, strict=True))
        return data

    def line(self, line_id: str) -> Line:
        return Line(
            line_id,
            self.kind,
            self.sku,
            self.region,
            self.price_class,
            self.version,
            self.unit_price,
            self.gpu_seconds,
            self.late_from,
        )

    @classmethod
    def of(cls, ln: Line) -> InvoiceRow:
        return cls(
            kind=ln.kind,
            sku=ln.sku,
            region=ln.region,
            price_class=ln.price_class,
            version=ln.version,
            unit_price=ln.unit_price,
            gpu_seconds=ln.gpu_seconds,
            late_from=ln.late_from,
        )


class Invoice(BaseModel):
    """A tenant's invoice for a month: a draft until the month is closed, then final."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    month: str
    currency: str
    status: Literal["draft", "final"] = "draft"
    lines: dict[str, InvoiceRow] = Field(default_factory=dict)
    charged: Decimal = Decimal(0)  # the running sum of its rounded lines
    total: Decimal | None = None  # set when final

    def line_list(self) -> list[Line]:
        return [row.line(line_id) for line_id, row in sorted(self.lines.items())]


class Parked(BaseModel):
    """Usage records that arrived before their allocation's placement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: list[dict[str, Any]] = Field(default_factory=list)  # {"entry_id", "fields"}
