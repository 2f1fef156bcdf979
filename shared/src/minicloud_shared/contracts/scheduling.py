"""Scheduling's contracts (the allocation lifecycle; the workload lifecycle follows).

An allocation is the unit everything downstream keys on: metering turns its
lifetime into GPU-seconds, billing prices them, inventory counts its GPUs as busy.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from minicloud_shared.contracts.agent import RunSpec
from minicloud_shared.contracts.envelope import Payload, register, upcaster
from minicloud_shared.contracts.topology import SCHEDULING_COMMANDS, SCHEDULING_EVENTS
from minicloud_shared.skus import MIG_PROFILE

PriceClass = Literal["on_demand", "spot", "reserved"]
ReleaseReason = Literal[
    "completed", "cancelled", "preempted", "gpu_fault", "drain", "max_duration", "failed", "budget", "host_lost"
]


class GpuSlice(BaseModel):
    """The GPUs of one host that an allocation holds."""

    # Nested parts ignore unknown fields (tolerant reading of nested data); their
    # fields are still validated strictly on construction.
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    gpu_indices: list[int] = Field(description="GPU indices on that host", examples=[[0, 1, 2, 3]])


class _Event(Payload):
    stream: ClassVar[str] = SCHEDULING_EVENTS


@register
class AllocationPlaced(_Event):
    """GPUs were given to a workload: the meter starts at ``started_at``."""

    event_type: ClassVar[str] = "minicloud.scheduling.allocation_placed"
    # Version 2: CPU-only work holds no GPU (``gpu_count`` 0, a widened range: readers
    # are upgraded first); shares and CPU and memory are new optional fields.
    schema_version: ClassVar[int] = 2

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="The workload it serves", examples=["wl-42"])
    sku: str = Field(description="GPU SKU", examples=["h100-80gb-sxm"])
    region: str = Field(description="Region", examples=["eu-1"])
    price_class: PriceClass = Field(description="Decided at placement; billing never re-derives it", examples=["spot"])
    gpus: list[GpuSlice] = Field(
        description="Which GPUs on which hosts", examples=[[{"host_id": "eu1-a-r01-h01", "gpu_indices": [0, 1]}]]
    )
    gpu_count: int = Field(description="GPUs in total (a share: 1; CPU-only work: 0)", examples=[2], ge=0)
    started_at: AwareDatetime = Field(
        description="When the allocation starts (event time)", examples=["2026-11-25T10:00:00Z"]
    )
    gpu_milli: int | None = Field(
        None, description="A share: the thousandths of its one GPU it holds (time-sliced)", examples=[250]
    )
    cpu_milli: int | None = Field(None, description="CPU per node, thousandths of a vCPU", examples=[16_000])
    memory_mib: int | None = Field(None, description="Memory per node, MiB", examples=[131_072])
    mig_profile: str | None = Field(None, description="A MIG slice: its profile", examples=["1g.10gb"])


@upcaster("minicloud.scheduling.allocation_placed", 1)
def _placed_v1(data: dict[str, Any]) -> dict[str, Any]:
    return data  # v2 only widened ``gpu_count`` and added optional fields


@register
class AllocationReleased(_Event):
    """An allocation ended: the meter stops at ``released_at``.

    Version 2 added the reason ``host_lost``: a widened enum is a new version (a v1
    reader would refuse the new value), so readers are upgraded before producers; v1
    entries read as v2 unchanged."""

    event_type: ClassVar[str] = "minicloud.scheduling.allocation_released"
    schema_version: ClassVar[int] = 2

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="The workload it served", examples=["wl-42"])
    reason: ReleaseReason = Field(description="Why it ended", examples=["completed"])
    gpus: list[GpuSlice] = Field(
        description="The GPUs it held", examples=[[{"host_id": "eu1-a-r01-h01", "gpu_indices": [0, 1]}]]
    )
    released_at: AwareDatetime = Field(description="When it ended (event time)", examples=["2026-11-25T12:00:00Z"])


@upcaster("minicloud.scheduling.allocation_released", 1)
def _released_v1(data: dict[str, Any]) -> dict[str, Any]:
    return data  # v2 only widened ``reason``


WorkloadKind = Literal["pre_training", "fine_tuning", "training", "inference", "dev"]


class _Command(Payload):
    stream: ClassVar[str] = SCHEDULING_COMMANDS


@register
class SubmitWorkload(_Command):
    """Run a workload: a gang of ``nodes`` hosts with ``gpus_per_node`` GPUs each; or,
    with ``gpus_per_node`` 0, a share of one GPU (``gpu_milli``) or CPU-only work
    (``cpu_milli`` and no ``gpu_milli``), on one node.

    The tenant is the envelope's (it comes from the caller's API key, never from a
    payload). ``workload_id`` is derived by the gateway from the tenant and the
    client's idempotency key, so the same submission sent twice names one workload.
    Version 2 widened ``gpus_per_node`` to 0 (shares, CPU-only work).
    """

    event_type: ClassVar[str] = "minicloud.scheduling.submit_workload"
    schema_version: ClassVar[int] = 2

    workload_id: str = Field(description="Workload id", examples=["wl-42"], pattern=r"^[A-Za-z0-9\-_.]{1,64}$")
    name: str = Field(description="A name for people", examples=["llama-ft-7b"], min_length=1, max_length=100)
    kind: WorkloadKind = Field(description="What kind of model work it is", examples=["fine_tuning"])
    sku: str | None = Field(description="GPU SKU, or null for any", examples=["h100-80gb-sxm"])
    skus: list[str] | None = Field(
        None,
        description="Acceptable GPU SKUs, any one of them (with sku null): a gang gets one SKU for all its nodes",
        examples=[["h100-80gb-sxm", "h200-141gb-sxm"]],
        min_length=2,
        max_length=16,
    )
    gpus_per_node: int = Field(
        description="Whole GPUs on each node (0: a share of one GPU, or CPU-only)", examples=[8], ge=0, le=72
    )
    nodes: int = Field(1, description="Nodes in the gang", examples=[2], ge=1, le=1024)
    region: str | None = Field(None, description="Region, or null for any", examples=["eu-1"])
    gpu_milli: int | None = Field(
        None,
        description="With gpus_per_node 0: a time-sliced share of one GPU, in thousandths (1-999)",
        examples=[None, 250],  # the first example is the documented message's: whole GPUs
        ge=1,
        le=999,
    )
    cpu_milli: int | None = Field(
        None,
        description="CPU per node, thousandths of a vCPU (null: the GPUs' proportional part of the host's; "
        "required for CPU-only work)",
        examples=[16_000],
        ge=1,
        le=10_000_000,
    )
    memory_mib: int | None = Field(
        None,
        description="Memory per node, MiB (null: the GPUs' proportional part of the host's; required for "
        "CPU-only work)",
        examples=[131_072],
        ge=1,
        le=1 << 30,
    )
    mig_profile: str | None = Field(
        None,
        description="With gpus_per_node 0: a MIG slice of one GPU, by profile (e.g. 1g.10gb on an H100), on a host "
        "whose GPUs are partitioned",
        examples=[None, "1g.10gb"],
        pattern=MIG_PROFILE,
    )
    price_class: PriceClass = Field("on_demand", description="on_demand, spot or reserved", examples=["spot"])
    priority: int = Field(100, description="Higher runs first (0-1000)", examples=[100], ge=0, le=1000)
    max_duration_s: int = Field(86_400, description="Stopped after this long", examples=[3600], ge=60, le=90 * 86_400)
    client_command_id: str = Field(
        description="The client's idempotency key", examples=["b7f1c0de"], min_length=1, max_length=128
    )
    run: RunSpec | None = Field(
        None,
        description="What to run on each node (image, command, env, port); null: a workload whose processes "
        "the tenant runs and ends itself (complete)",
        examples=[{"image": "minicloud/workload:bookworm", "command": ["python3", "train.py"]}],
    )

    @model_validator(mode="after")
    def _one_shape(self) -> SubmitWorkload:
        problem = shape_problem(
            self.gpus_per_node, self.nodes, self.gpu_milli, self.cpu_milli, self.memory_mib, self.mig_profile
        )
        if problem:
            raise ValueError(problem)
        return self


def shape_problem(
    gpus_per_node: int,
    nodes: int,
    gpu_milli: int | None,
    cpu_milli: int | None,
    memory_mib: int | None,
    mig_profile: str | None = None,
) -> str | None:
    """What is wrong with a request's shape, in words (None: nothing). Whole GPUs, a
    share of one GPU, a MIG slice, or CPU only — one of them, on one node unless whole
    GPUs."""
    shapes = (("gpus_per_node", gpus_per_node), ("gpu_milli", gpu_milli), ("mig_profile", mig_profile))
    asked = [name for name, value in shapes if value]
    if len(asked) > 1:
        return (
            "ask for one of whole GPUs (gpus_per_node), a share (gpu_milli) or a MIG slice (mig_profile), "
            f"not both {' and '.join(asked)}"
        )
    if not gpus_per_node and nodes != 1:
        return "a GPU share, MIG slice or CPU-only workload runs on one node"
    if not asked and (cpu_milli is None or memory_mib is None):
        return "CPU-only work (no GPUs, no gpu_milli, no mig_profile) must ask for cpu_milli and memory_mib"
    return None


@upcaster("minicloud.scheduling.submit_workload", 1)
def _submit_v1(data: dict[str, Any]) -> dict[str, Any]:
    return data  # v2 only widened ``gpus_per_node`` and added optional fields


@register
class CompleteWorkload(_Command):
    """The tenant says the workload is done: release its GPUs, stop the meter."""

    event_type: ClassVar[str] = "minicloud.scheduling.complete_workload"

    workload_id: str = Field(description="Workload id", examples=["wl-42"])


@register
class CancelWorkload(_Command):
    """Stop the workload (queued or running)."""

    event_type: ClassVar[str] = "minicloud.scheduling.cancel_workload"

    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    reason: str = Field("cancelled by the tenant", description="Why", examples=["no longer needed"], max_length=500)


@register
class SetQuota(_Command):
    """An operator sets a tenant's GPU quota for a SKU and region (``*`` for any)."""

    event_type: ClassVar[str] = "minicloud.scheduling.set_quota"

    sku: str = Field(description="GPU SKU or *", examples=["h100-80gb-sxm"])
    region: str = Field(description="Region or *", examples=["eu-1"])
    gpus: int = Field(description="GPUs the tenant may hold at once", examples=[64], ge=0)


@register
class GrantReservation(_Command):
    """An operator grants a tenant reserved capacity: ``gpus`` GPUs of a SKU in a region
    for a term. Its work with price class ``reserved`` runs within it, at the reserved
    price and ahead of on-demand work; what does not fit waits (code ``reservation``)."""

    event_type: ClassVar[str] = "minicloud.scheduling.grant_reservation"

    reservation_id: str = Field(
        description="Reservation id (the operator's name for it)",
        examples=["acme-h100-2026q4"],
        pattern=r"^[a-z0-9][a-z0-9\-_.]{0,62}$",
    )
    sku: str = Field(description="GPU SKU", examples=["h100-80gb-sxm"], max_length=63)
    region: str = Field(description="Region", examples=["eu-1"], max_length=63)
    gpus: int = Field(description="GPUs reserved", examples=[16], ge=1, le=100_000)
    starts_at: AwareDatetime = Field(description="Start of the term", examples=["2026-12-01T00:00:00Z"])
    ends_at: AwareDatetime = Field(description="End of the term", examples=["2027-12-01T00:00:00Z"])


@register
class ReservationGranted(_Event):
    """A tenant holds reserved capacity (the tenant is the envelope's)."""

    event_type: ClassVar[str] = "minicloud.scheduling.reservation_granted"

    reservation_id: str = Field(description="Reservation id", examples=["acme-h100-2026q4"])
    sku: str = Field(description="GPU SKU", examples=["h100-80gb-sxm"])
    region: str = Field(description="Region", examples=["eu-1"])
    gpus: int = Field(description="GPUs reserved", examples=[16], ge=1)
    starts_at: AwareDatetime = Field(description="Start of the term", examples=["2026-12-01T00:00:00Z"])
    ends_at: AwareDatetime = Field(description="End of the term", examples=["2027-12-01T00:00:00Z"])


@register
class WorkloadAccepted(_Event):
    """The workload is valid and known; placement follows (now, or from the queue)."""

    event_type: ClassVar[str] = "minicloud.scheduling.workload_accepted"

    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    name: str = Field(description="Name", examples=["llama-ft-7b"])
    kind: WorkloadKind = Field(description="Kind", examples=["fine_tuning"])
    sku: str | None = Field(description="SKU or null for any", examples=["h100-80gb-sxm"])
    skus: list[str] | None = Field(
        None, description="Acceptable SKUs, any one of them (sku null)", examples=[["h100-80gb-sxm", "h200-141gb-sxm"]]
    )
    gpus_per_node: int = Field(description="GPUs per node", examples=[8])
    nodes: int = Field(description="Nodes", examples=[2])
    gpu_milli: int | None = Field(None, description="A share of one GPU, thousandths", examples=[250])
    cpu_milli: int | None = Field(None, description="CPU per node, thousandths of a vCPU", examples=[16_000])
    memory_mib: int | None = Field(None, description="Memory per node, MiB", examples=[131_072])
    mig_profile: str | None = Field(None, description="A MIG slice, by profile", examples=["1g.10gb"])
    region: str | None = Field(description="Region or null", examples=["eu-1"])
    price_class: PriceClass = Field(description="Price class", examples=["on_demand"])
    priority: int = Field(description="Priority", examples=[100])
    max_duration_s: int = Field(description="Maximum duration, seconds", examples=[3600])
    run: RunSpec | None = Field(
        None,
        description="What it runs (null: run by the tenant)",
        examples=[{"image": "minicloud/workload:bookworm", "command": ["python3", "train.py"]}],
    )


@register
class WorkloadRejected(_Event):
    """The submission cannot be run as asked; nothing was queued."""

    event_type: ClassVar[str] = "minicloud.scheduling.workload_rejected"

    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    code: str = Field(
        description="Stable code: too_large, no_such_capacity, conflict, unknown_workload, not_running, budget",
        examples=["too_large"],
    )
    reason: str = Field(description="For a person", examples=["no host has 16 h100-80gb-sxm GPUs: the largest has 8"])


@register
class WorkloadQueued(_Event):
    """The workload waits; the reason says for what, in words a tenant understands."""

    event_type: ClassVar[str] = "minicloud.scheduling.workload_queued"

    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    code: str = Field(description="quota, capacity, topology, priority, requeued, budget", examples=["capacity"])
    reason: str = Field(
        description="Why it waits", examples=["waiting for capacity: 3 of the 16 h100-80gb-sxm GPUs it needs are free"]
    )


@register
class WorkloadStarted(_Event):
    """The workload runs on the allocation placed for it."""

    event_type: ClassVar[str] = "minicloud.scheduling.workload_started"

    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    allocation_id: str = Field(description="Its allocation", examples=["alloc-7f3a"])
    started_at: AwareDatetime = Field(description="When (event time)", examples=["2026-11-25T10:00:00Z"])


@register
class WorkloadEnded(_Event):
    """The workload is over: completed, cancelled or failed."""

    event_type: ClassVar[str] = "minicloud.scheduling.workload_ended"

    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    outcome: Literal["completed", "cancelled", "failed"] = Field(description="How it ended", examples=["completed"])
    reason: str = Field(description="Why", examples=["completed by the tenant"])
    ended_at: AwareDatetime = Field(description="When (event time)", examples=["2026-11-25T12:00:00Z"])
    exit_code: int | None = Field(None, description="The exit code that ended it (run workloads)", examples=[3])
    host_id: str | None = Field(None, description="The host whose process ended it", examples=["eu1-a-r01-h02"])


@register
class QuotaSet(_Event):
    """A tenant's quota changed."""

    event_type: ClassVar[str] = "minicloud.scheduling.quota_set"

    sku: str = Field(description="SKU or *", examples=["h100-80gb-sxm"])
    region: str = Field(description="Region or *", examples=["eu-1"])
    gpus: int = Field(description="GPUs", examples=[64])


SCHEDULING_HOSTLOG = "mc.scheduling.hostlog"


@register
class HostChanged(Payload):
    """Internal to scheduling: a host record changed. Every scheduling replica follows
    this log to refresh its in-memory placement view; nobody else needs to read it."""

    event_type: ClassVar[str] = "minicloud.scheduling.host_changed"
    stream: ClassVar[str] = SCHEDULING_HOSTLOG

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    version: int = Field(description="The record's new version", examples=[7])


@register
class SchedulingTick(_Command):
    """Internal: scheduling's clock ticked (deadlines and notice periods are checked)."""

    event_type: ClassVar[str] = "minicloud.scheduling.tick"

    at: AwareDatetime = Field(description="The tick's instant (event time)", examples=["2026-11-25T10:00:00Z"])


@register
class SpotNotice(_Event):
    """Spot work will be stopped at ``stop_at`` to make room for higher-class work."""

    event_type: ClassVar[str] = "minicloud.scheduling.spot_notice"

    workload_id: str = Field(description="The spot workload", examples=["wl-7"])
    allocation_id: str = Field(description="Its allocation", examples=["alloc-7f3a"])
    notice_at: AwareDatetime = Field(description="When the notice was given", examples=["2026-11-25T10:00:00Z"])
    stop_at: AwareDatetime = Field(description="When it will be stopped", examples=["2026-11-25T10:00:30Z"])
    reason: str = Field(description="For whom", examples=["capacity for on_demand work wl-9"])
