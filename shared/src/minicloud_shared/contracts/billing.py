"""Billing's contracts: the price catalog, accounts and budgets, charges and invoices.

Money is a decimal string on the wire (``"12.34"``) with its currency beside it, never
a float. Commands about a tenant's account name the tenant in the envelope, as every
tenant-scoped message does.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from minicloud_shared.contracts.envelope import Payload, register
from minicloud_shared.contracts.scheduling import PriceClass
from minicloud_shared.contracts.topology import BILLING_COMMANDS, BILLING_EVENTS

Money = Decimal


class PriceRow(BaseModel):
    """The price of one GPU-hour of a SKU in a region (``*``: any) and price class."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    sku: str = Field(description="GPU SKU", examples=["h100-80gb-sxm"])
    region: str = Field("*", description="Region, or * for every region without a row of its own", examples=["*"])
    price_class: PriceClass = Field(description="on_demand, spot or reserved", examples=["on_demand"])
    per_gpu_hour: Money = Field(description="Price of one GPU-hour", examples=["2.49"], ge=0, decimal_places=6)


class _Command(Payload):
    stream: ClassVar[str] = BILLING_COMMANDS


class _Event(Payload):
    stream: ClassVar[str] = BILLING_EVENTS


@register
class PublishPriceCatalog(_Command):
    """An operator publishes a catalog version: in force from ``effective_at`` until the
    next version's. Usage is rated at the version in force when it happened."""

    event_type: ClassVar[str] = "minicloud.billing.publish_price_catalog"

    version: str = Field(description="Version name", examples=["2026-12"], pattern=r"^[A-Za-z0-9\-_.]{1,32}$")
    effective_at: AwareDatetime = Field(description="From when it applies (UTC)", examples=["2026-12-01T00:00:00Z"])
    currency: str = Field("USD", description="ISO 4217 currency", examples=["USD"], pattern=r"^[A-Z]{3}$")
    prices: list[PriceRow] = Field(
        description="The prices this version sets; every other price carries over from the version before",
        examples=[[{"sku": "h100-80gb-sxm", "region": "*", "price_class": "on_demand", "per_gpu_hour": "2.39"}]],
        min_length=1,
        max_length=10_000,
    )


@register
class SetAccount(_Command):
    """An operator sets a tenant's credit limit and monthly budget (the tenant is the envelope's)."""

    event_type: ClassVar[str] = "minicloud.billing.set_account"

    credit_limit: Money = Field(
        Decimal("0"), description="Charges allowed beyond prepaid credit", examples=["1000"], ge=0
    )
    soft_budget: Money | None = Field(
        None, description="Monthly charges that raise an alert (null: none)", examples=["800"], ge=0
    )
    hard_budget: Money | None = Field(
        None, description="Monthly charges at which new work stops (null: none)", examples=["1000"], ge=0
    )


@register
class AddCredit(_Command):
    """Prepaid credit is added to a tenant's account (a payment, a promotion)."""

    event_type: ClassVar[str] = "minicloud.billing.add_credit"

    amount: Money = Field(description="Amount added", examples=["500.00"], gt=0, decimal_places=2)
    reference: str = Field(description="Payment or grant reference", examples=["pay-2026-11-0042"], max_length=128)


@register
class SetCommitment(_Command):
    """A committed-use discount: the tenant commits to GPU-hours of a SKU per month."""

    event_type: ClassVar[str] = "minicloud.billing.set_commitment"

    sku: str = Field(description="GPU SKU", examples=["h100-80gb-sxm"])
    gpu_hours_per_month: int = Field(description="Committed GPU-hours per month (0 ends it)", examples=[5000], ge=0)
    discount_pct: Money = Field(description="Discount on covered usage, percent", examples=["30"], ge=0, lt=100)


@register
class BillingTick(_Command):
    """Internal: billing's clock ticked (months past their close are finalized)."""

    event_type: ClassVar[str] = "minicloud.billing.tick"

    at: AwareDatetime = Field(description="The tick's instant (event time)", examples=["2026-12-01T01:00:00Z"])


@register
class PriceCatalogPublished(_Event):
    """A catalog version is accepted."""

    event_type: ClassVar[str] = "minicloud.billing.price_catalog_published"

    version: str = Field(description="Version name", examples=["2026-12"])
    effective_at: AwareDatetime = Field(description="From when", examples=["2026-12-01T00:00:00Z"])
    currency: str = Field(description="Currency", examples=["USD"])
    prices: list[PriceRow] = Field(
        description="Every price in force from then",
        examples=[[{"sku": "h100-80gb-sxm", "region": "*", "price_class": "on_demand", "per_gpu_hour": "2.39"}]],
    )


@register
class BillingCommandRejected(_Event):
    """A billing command was refused; nothing changed."""

    event_type: ClassVar[str] = "minicloud.billing.command_rejected"

    command: str = Field(description="The command's event type", examples=["minicloud.billing.publish_price_catalog"])
    code: str = Field(description="Stable code", examples=["bad_catalog"])
    reason: str = Field(description="For a person", examples=["effective_at is before the newest version's"])


@register
class AccountUpdated(_Event):
    """A tenant's account as it now stands."""

    event_type: ClassVar[str] = "minicloud.billing.account_updated"

    credits: Money = Field(description="Prepaid credit added so far", examples=["500.00"])
    credit_limit: Money = Field(description="Credit limit", examples=["1000"])
    soft_budget: Money | None = Field(description="Monthly alert threshold", examples=["800"])
    hard_budget: Money | None = Field(description="Monthly hard limit", examples=["1000"])
    charged: Money = Field(description="All charges so far", examples=["123.45"])
    currency: str = Field(description="Currency", examples=["USD"])
    state: Literal["ok", "blocked"] = Field(
        "ok", description="blocked: a hard limit is reached and new work is refused", examples=["ok"]
    )
    cause: str | None = Field(None, description="What blocked it: hard_budget or credit", examples=[None])
    month: str | None = Field(None, description="The current billing month", examples=["2026-11"])
    month_charged: Money | None = Field(None, description="Charges this month so far", examples=["812.40"])
    funded: bool = Field(
        False,
        description="Credit and limits are enforced (an operator set the account); false: postpaid",
        examples=[True],
    )


@register
class AllocationCharged(_Event):
    """An allocation's usage is rated in full (its last usage record was billed)."""

    event_type: ClassVar[str] = "minicloud.billing.allocation_charged"

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    gpu_seconds: int = Field(description="GPU-seconds billed, minimum included", examples=[28800])
    minimum_gpu_seconds: int = Field(description="Of which added by the 60 s minimum", examples=[0])
    amount: Money = Field(description="Its charges (lines are rounded on the invoice)", examples=["19.92"])
    currency: str = Field(description="Currency", examples=["USD"])


BudgetCause = Literal["hard_budget", "credit"]


@register
class BudgetAlert(_Event):
    """The tenant's charges this month passed its soft budget."""

    event_type: ClassVar[str] = "minicloud.billing.budget_alert"

    month: str = Field(description="Billing month", examples=["2026-11"])
    charged: Money = Field(description="Charges this month", examples=["812.40"])
    soft_budget: Money = Field(description="The soft budget", examples=["800"])
    currency: str = Field(description="Currency", examples=["USD"])


@register
class BudgetExceeded(_Event):
    """The tenant reached a hard limit: scheduling admits no new work for it and stops
    its spot and dev work until it is restored."""

    event_type: ClassVar[str] = "minicloud.billing.budget_exceeded"

    cause: BudgetCause = Field(
        description="hard_budget (this month) or credit (credit + limit used up)", examples=["credit"]
    )
    charged: Money = Field(description="The charges that reached it", examples=["1000.02"])
    limit: Money = Field(description="The limit reached", examples=["1000"])
    currency: str = Field(description="Currency", examples=["USD"])
    reason: str = Field(description="For a person", examples=["charges of 1000.02 USD reached the credit of 1000 USD"])
    reached_at: AwareDatetime | None = Field(
        None,
        description=(
            "When charges reached it (event time: the end of the usage that crossed it). At a hard budget,"
            " scheduling ends the tenant's work at this instant: time after it is the cloud's."
        ),
        examples=["2026-12-14T09:31:00Z"],
    )


@register
class BudgetRestored(_Event):
    """The tenant is below its limits again (credit added, budget raised, new month)."""

    event_type: ClassVar[str] = "minicloud.billing.budget_restored"

    reason: str = Field(description="For a person", examples=["credit of 500.00 USD added"])


_LINE_EXAMPLE = {
    "line_id": "usage|h100-80gb-sxm|eu-1|on_demand|2026-01",
    "kind": "usage",
    "description": "GPU time: h100-80gb-sxm in eu-1, on_demand, catalog 2026-01",
    "sku": "h100-80gb-sxm",
    "region": "eu-1",
    "price_class": "on_demand",
    "catalog_version": "2026-01",
    "gpu_seconds": 28800,
    "unit_price": "2.99",
    "amount": "23.92",
}


class InvoiceLine(BaseModel):
    """One line of an invoice."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    line_id: str = Field(
        description="Stable id within the invoice", examples=["usage|h100-80gb-sxm|eu-1|on_demand|2026-11"]
    )
    kind: Literal["usage", "minimum", "commitment_discount", "commitment_shortfall"] = Field(
        description="What the line charges", examples=["usage"]
    )
    description: str = Field(description="For a person", examples=["h100-80gb-sxm in eu-1, on_demand, catalog 2026-11"])
    sku: str | None = Field(description="GPU SKU", examples=["h100-80gb-sxm"])
    region: str | None = Field(description="Region", examples=["eu-1"])
    price_class: str | None = Field(description="Price class", examples=["on_demand"])
    catalog_version: str | None = Field(description="Catalog version of the unit price", examples=["2026-11"])
    gpu_seconds: int = Field(description="Quantity, GPU-seconds", examples=[28800])
    unit_price: Money = Field(description="Price per GPU-hour", examples=["2.49"])
    amount: Money = Field(description="Quantity x unit price / 3600, rounded once", examples=["19.92"])


@register
class InvoiceFinalized(_Event):
    """A tenant's invoice for a calendar month is final."""

    event_type: ClassVar[str] = "minicloud.billing.invoice_finalized"

    invoice_id: str = Field(description="Invoice id", examples=["inv-acme-2026-11"])
    month: str = Field(description="Billing month", examples=["2026-11"])
    currency: str = Field(description="Currency", examples=["USD"])
    lines: list[InvoiceLine] = Field(
        description="Its lines",
        examples=[[_LINE_EXAMPLE]],
    )
    total: Money = Field(description="Sum of the lines", examples=["1234.56"])


class LineAllocation(BaseModel):
    """One allocation behind an invoice line: why the line is there."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    gpu_seconds: int = Field(description="Its GPU-seconds on this line", examples=[28800])
    records: int = Field(description="Usage records rated onto this line", examples=[481])


class ExplainedLine(InvoiceLine):
    """An invoice line with the allocations behind it (the largest first)."""

    allocations: list[LineAllocation] = Field(
        description="The allocations behind the line, largest first (at most 200)",
        examples=[[{"allocation_id": "alloc-7f3a", "gpu_seconds": 28800, "records": 481}]],
    )
    allocation_count: int = Field(description="How many allocations are behind the line in all", examples=[1])


@register
class InvoiceUpdated(_Event):
    """A tenant's invoice for a month as it now stands (a draft while the month is open,
    then final): published on billing's tick for invoices that changed since the last one."""

    event_type: ClassVar[str] = "minicloud.billing.invoice_updated"

    invoice_id: str = Field(description="Invoice id", examples=["inv-acme-2026-11"])
    month: str = Field(description="Billing month", examples=["2026-11"])
    status: Literal["draft", "final"] = Field(description="draft (the month is open) or final", examples=["draft"])
    revision: int = Field(description="Grows with every change: a reader keeps the highest", examples=[42], ge=0)
    as_of: AwareDatetime = Field(
        description="When this snapshot was taken (event time)", examples=["2026-11-25T12:00:00Z"]
    )
    currency: str = Field(description="Currency", examples=["USD"])
    lines: list[ExplainedLine] = Field(
        description="Its lines, each with the allocations behind it",
        examples=[
            [
                {
                    **_LINE_EXAMPLE,
                    "allocations": [{"allocation_id": "alloc-7f3a", "gpu_seconds": 28800, "records": 481}],
                    "allocation_count": 1,
                }
            ]
        ],
    )
    total: Money = Field(description="Sum of the lines", examples=["1234.56"])
