"""The public API's responses, as the OpenAPI document states them.

Every 2xx body is one of these models and every error body is :class:`ErrorBody`.
They are closed: the document says ``additionalProperties: false``, and a response is
serialized through its model, so a key a projection holds but the contract does not
name never reaches a client (schemathesis checks each answer against its schema in
``tests/integration/test_api_fuzz.py``). Money is a decimal string, times ISO 8601.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from minicloud_shared.contracts.agent import LogStream

Amount = Annotated[str, Field(pattern=r"^-?\d+(\.\d+)?$", examples=["23.92"])]
Hours = Annotated[str, Field(pattern=r"^-?\d+\.\d{4}$", examples=["8.0000"])]


class Out(BaseModel):
    # Keys a projection holds beyond the model are dropped when the answer is written,
    # so the closed schema is what clients get.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"additionalProperties": False})


class ErrorDetail(Out):
    code: str = Field(description="Stable, for programs (docs/gateway.md lists them)", examples=["not_found"])
    message: str = Field(description="For people", examples=["no workload wl-42"])


class ErrorBody(Out):
    error: ErrorDetail


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses ``codes`` (every one the JSON error body)."""
    what = {
        400: "The body is not JSON, or a required header is missing",
        401: "No valid API key (WWW-Authenticate: Bearer)",
        402: "The tenant's budget admits no new work",
        403: "The key's role or the tenant's grants do not allow it",
        404: "No such object (another tenant's answers the same)",
        409: "A conflict: the object exists, or the Idempotency-Key was used with another body",
        413: "The body is over 64 KiB (counted as read)",
        422: "The request is invalid: the message says which field and why",
        429: "Rate-limited (Retry-After says when to try again)",
        500: "The gateway failed; the failure is logged",
        503: "Unavailable: Redis unreachable, or its storage nearly full (Retry-After)",
    }
    out: dict[int | str, dict[str, Any]] = {c: {"model": ErrorBody, "description": what[c]} for c in codes}
    for c in (429, 503):
        if c in out:
            out[c]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}}
    if 401 in out:
        out[401]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


EVERY = errors(400, 413, 422, 429, 500, 503)  # any route
AUTH = errors(401, 403)  # routes that need a key


# --- health and identity ----------------------------------------------------------------


class Alive(Out):
    service: str = Field(examples=["gateway"])
    up: bool


class Readiness(BaseModel):
    """Readiness (open: the runtime may add what it checks)."""

    model_config = ConfigDict(extra="allow")

    service: str = Field(examples=["gateway"])
    ready: bool
    reasons: list[str] = Field(default_factory=list)
    projection_lag: dict[str, int | None] = Field(default_factory=dict)


class TenantRow(Out):
    tenant_id: str
    name: str
    created_at: str | None
    keys_issued: int
    keys_active: int
    max_priority: int


class Tenants(Out):
    items: list[TenantRow]


class TenantCreated(Out):
    tenant_id: str
    name: str


class Limits(Out):
    tenant_id: str
    max_priority: int


class KeyIssued(Out):
    key_id: str
    key: str = Field(description="Shown once", examples=["mck_0123456789ab_..."])
    note: str


class KeyRow(Out):
    key_id: str
    created_at: str | None
    last_used_at: str | None = Field(description="To the minute")
    revoked: bool
    revoked_at: str | None


class Keys(Out):
    items: list[KeyRow]


# --- workloads --------------------------------------------------------------------------


class Accepted(Out):
    workload_id: str
    status: Literal["submitted", "requested"]


class AllocationView(Out):
    allocation_id: str
    sku: str
    region: str
    gpus: int = Field(description="GPUs it holds, whole or in part (a share: 1; CPU-only work: 0)")
    hosts: list[str]
    started_at: str
    gpu_indices: list[list[int]] | None = Field(None, description="Per host: the GPU indices it holds")
    gpu_milli: int | None = Field(None, description="A share: the thousandths of its GPU it holds")
    cpu_milli: int | None = Field(None, description="CPU per node, thousandths of a vCPU")
    memory_mib: int | None = Field(None, description="Memory per node, MiB")
    mig_profile: str | None = Field(None, description="A MIG slice: its profile")


class ChargeView(Out):
    allocation_id: str
    gpu_seconds: int = Field(description="Billed, minimum included")
    minimum_gpu_seconds: int
    amount: Amount = Field(description="What it costs on an invoice of its own (docs/billing.md)")
    currency: str


class EndpointView(Out):
    address: str
    port: int
    host_id: str
    url: str


class LogLine(Out):
    id: str = Field(description="The line's position: pass it as since= to read what follows")
    t: str = Field(description="When the line was written")
    rank: int = Field(description="The node (rank) that wrote it")
    stream: LogStream = Field(description="stdout, stderr, or agent (the cloud's own note)")
    line: str


class Logs(Out):
    lines: list[LogLine]
    next: str = Field(description="since= for the next read ('0' from the start)")
    ended: bool = Field(description="The workload has ended (no more lines will come once these are read)")


class TraceStep(Out):
    at: str = Field(description="When it happened (event time)", examples=["2026-11-25T12:00:00+00:00"])
    type: str = Field(description="The event's type", examples=["minicloud.scheduling.allocation_placed"])
    producer: str = Field(description="The service that published it", examples=["scheduling"])
    event_id: str
    correlation_id: str = Field(description="The request it was made on behalf of")
    causation_id: str | None = Field(None, description="The message that triggered it")
    status: str = Field(description="The workload's status once it was applied")
    allocation_id: str | None = Field(None, description="The allocation it concerns, if any")


class InvoiceLineRef(Out):
    month: str = Field(examples=["2026-11"])
    line_id: str
    description: str
    gpu_seconds: int = Field(description="This allocation's GPU-seconds on the line")


class WorkloadTrace(Out):
    workload_id: str
    correlation_id: str | None = Field(
        None, description="The request that submitted it: the id every service's events about it carry"
    )
    steps: list[TraceStep] = Field(description="Every fact about it the cloud published, in time order")
    invoice_lines: list[InvoiceLineRef] = Field(
        description="The invoice lines its allocations are on (as the last invoice snapshot lists them)"
    )


class WorkloadView(Out):
    workload_id: str
    status: Literal["submitted", "accepted", "queued", "running", "rejected", "ended"]
    name: str | None = None
    kind: str | None = None
    sku: str | None = None
    skus: list[str] | None = Field(None, description="The acceptable SKUs, when it named several")
    gpus_per_node: int | None = None
    nodes: int | None = None
    gpu_milli: int | None = Field(None, description="A share of one GPU, thousandths")
    cpu_milli: int | None = Field(None, description="CPU per node it asked for, thousandths of a vCPU")
    memory_mib: int | None = Field(None, description="Memory per node it asked for, MiB")
    mig_profile: str | None = Field(None, description="A MIG slice it asked for, by profile")
    region: str | None = None
    price_class: str | None = None
    priority: int | None = None
    max_duration_s: int | None = None
    submitted_at: str | None = None
    code: str | None = Field(None, description="Why it was rejected (a code)")
    reason: str | None = None
    pending_code: str | None = None
    pending_reason: str | None = None
    interruptions: dict[str, int] | None = None
    allocation: AllocationView | None = None
    started_at: str | None = None
    first_started_at: str | None = None
    outcome: str | None = None
    ended_at: str | None = None
    charge: ChargeView | None = None
    image: str | None = Field(None, description="What it runs (run workloads)")
    command: list[str] | None = None
    env: dict[str, str] | None = None
    port: int | None = Field(None, description="The port an inference service listens on")
    running_at: str | None = Field(None, description="When its process (rank 0's) started on its host")
    endpoint: EndpointView | None = Field(None, description="Where an inference service is reached, once it listens")
    exit_code: int | None = Field(None, description="The exit code that ended it")
    failed_host: str | None = Field(None, description="The host whose process ended it with a non-zero code")


class Workloads(Out):
    items: list[WorkloadView]
    next: str | None = Field(description="The ``after`` of the next page, or null")


class Reservation(Out):
    reservation_id: str
    tenant: str
    sku: str
    region: str
    gpus: int
    starts_at: str
    ends_at: str
    in_force: bool


class Reservations(Out):
    items: list[Reservation]


# --- prices -----------------------------------------------------------------------------


class Sku(Out):
    sku: str
    name: str
    memory_gb: int
    bf16_tflops: str
    interconnect: str
    nvlink_gbps: int


class Skus(Out):
    items: list[Sku]


class PriceRowOut(Out):
    sku: str
    region: str
    price_class: str
    per_gpu_hour: Amount


class Upcoming(Out):
    version: str
    effective_at: str
    prices: list[PriceRowOut]


class PriceList(Out):
    currency: str
    version: str
    effective_at: str
    prices: list[PriceRowOut]
    upcoming: list[Upcoming]


class QuotePart(Out):
    catalog_version: str
    unit_price: Amount
    gpu_seconds: int
    amount: Amount


class Quote(Out):
    sku: str
    region: str
    price_class: str
    gpus: int
    duration_s: int
    billed_seconds: int
    currency: str
    amount: Amount = Field(description="The sum of the parts, each rounded like an invoice line")
    parts: list[QuotePart]


class CatalogVersionRow(Out):
    version: str
    effective_at: str
    currency: str


class CatalogVersions(Out):
    items: list[CatalogVersionRow]


# --- operations and the fleet -----------------------------------------------------------


class Operation(Out):
    operation_id: str
    status: Literal["pending", "done", "rejected", "failed"]
    command: str
    what: str
    message: str | None = None
    code: str | None = None


class HostOut(Out):
    host_id: str | None
    region: str | None
    zone: str | None
    rack: str | None
    nvlink_domain: str | None
    sku: str | None
    state: str | None
    gpus: int
    free: int = Field(description="GPUs free to be given whole (none on a MIG-partitioned host)")
    allocated: int = Field(description="GPUs that hold work, whole, shared or sliced")
    faulted: list[int]
    allocations: list[str]
    drain_reason: str
    generation: int
    address: str | None = Field(None, description="Where its workloads are reached (its agent registered it)")
    reachable: bool = Field(True, description="False while its agent is silent (no heartbeat)")
    gpu_mode: str = Field("whole", description="whole; shared: time-sliced shares too; mig: MIG slices of mig_layout")
    mig_layout: list[str] | None = Field(None, description="MIG: the slices every GPU is partitioned into")
    cpu_milli: int | None = Field(None, description="CPU it declared, thousandths of a vCPU (null: not declared)")
    memory_mib: int | None = Field(None, description="Memory it declared, MiB")


class Hosts(Out):
    items: list[HostOut]
    next: str | None


class CapacityRow(Out):
    sku: str
    region: str
    hosts: int
    total: int
    free: int
    allocated: int
    faulted: int
    draining: int
    utilization: float
    bf16_pflops: str


class FleetTotals(Out):
    hosts: int
    total: int
    free: int
    allocated: int
    faulted: int
    draining: int
    utilization: float


class Capacity(Out):
    items: list[CapacityRow]
    fleet: FleetTotals


class AvailabilityRow(Out):
    sku: str
    region: str
    free_gpus: int
    max_free_on_one_host: int


class Availability(Out):
    items: list[AvailabilityRow]


class RegionRow(Out):
    region: str
    zones: list[str]
    skus: list[str]


class Regions(Out):
    items: list[RegionRow]


# --- money ------------------------------------------------------------------------------


class Alert(Out):
    kind: str
    at: str
    message: str


class Account(Out):
    tenant: str
    state: Literal["ok", "blocked"]
    note: str | None = None
    alerts: list[Alert]
    currency: str | None = None
    cause: str | None = None
    credits: Amount | None = None
    credit_limit: Amount | None = None
    charged: Amount | None = None
    available: Amount | None = Field(None, description="Credit + limit - charges; null when postpaid")
    postpaid: bool | None = None
    soft_budget: Amount | None = None
    hard_budget: Amount | None = None
    month: str | None = None
    month_charged: Amount | None = None
    as_of: str | None = None


class InvoiceRow(Out):
    invoice_id: str
    month: str
    status: Literal["draft", "final"]
    currency: str
    total: Amount
    as_of: str


class Invoices(Out):
    items: list[InvoiceRow]


class InvoiceLineOut(Out):
    line_id: str
    kind: Literal["usage", "minimum", "commitment_discount", "commitment_shortfall"]
    description: str
    sku: str | None
    region: str | None
    price_class: str | None
    catalog_version: str | None
    gpu_seconds: int
    unit_price: Amount
    amount: Amount
    allocation_count: int


class Invoice(Out):
    invoice_id: str
    month: str
    status: Literal["draft", "final"]
    revision: int
    as_of: str
    currency: str
    lines: list[InvoiceLineOut]
    total: Amount


class LineAllocationOut(Out):
    allocation_id: str
    gpu_seconds: int
    records: int
    gpu_hours: Hours
    workload_id: str | None
    workload_name: str | None


class LineExplanation(InvoiceLineOut):
    invoice_id: str
    status: Literal["draft", "final"]
    gpu_hours: Hours
    computation: str = Field(examples=["8.0000 GPU-hours x 2.99 USD/GPU-hour = 23.92 USD"])
    allocations: list[LineAllocationOut]


class UsageItem(Out):
    sku: str | None
    region: str | None
    price_class: str | None
    gpu_hours: Hours
    amount: Amount


class UsageMonth(Out):
    month: str
    status: Literal["draft", "final"]
    as_of: str
    currency: str
    items: list[UsageItem]


class Usage(Out):
    months: list[UsageMonth]


# --- the operator's views (the console's fleet, queue, revenue and dead letters) ---------


class QueueItem(Out):
    tenant: str
    workload_id: str
    status: Literal["accepted", "queued"]
    name: str | None = None
    sku: str | None = None
    skus: list[str] | None = None
    gpus_per_node: int | None = None
    nodes: int | None = None
    region: str | None = None
    price_class: str | None = None
    priority: int | None = None
    submitted_at: str | None = None
    waiting_s: int = Field(description="Seconds since it was submitted (the cloud's clock)")
    pending_code: str | None = None
    pending_reason: str | None = None


class Queue(Out):
    items: list[QueueItem] = Field(description="Waiting workloads of every tenant, longest waiting first")
    total: int = Field(description="How many wait in all (items holds at most ``limit``)")


class RevenueRow(Out):
    sku: str
    price_class: str
    catalog_version: str | None
    kind: str
    gpu_hours: str
    amount: str


class Revenue(Out):
    month: str
    currency: str | None
    total: str
    tenants: int = Field(description="Tenants with an invoice for the month")
    invoices: dict[str, int] = Field(description="Invoices by status (draft, final)")
    items: list[RevenueRow]


class DeadLetter(Out):
    entry_id: str
    type: str | None
    kind: str | None = Field(description="poison, refused or failed")
    reason: str | None
    at: str | None
    tenant: str | None = None


class DeadLetterStream(Out):
    stream: str
    group: str
    dead_letter_stream: str
    count: int
    latest: list[DeadLetter] = Field(description="The newest few, newest first")


class DeadLetters(Out):
    total: int
    items: list[DeadLetterStream]


class CapacitySample(Out):
    at: str
    total: int
    allocated: int
    free: int
    faulted: int
    utilization: float
    skus: dict[str, dict[str, int]] = Field(description="Per SKU: total and allocated GPUs")


class CapacityHistory(Out):
    every_s: float = Field(description="Seconds between samples")
    items: list[CapacitySample] = Field(description="Oldest first")
