"""Metering's contracts: usage records, the unit everything billed is made of.

A usage record is a span of GPU time of one allocation, in whole seconds of event
time. Its ``usage_id`` is the allocation id and a sequence number: it names the unit
of usage, so the record is the same whichever attempt produced it, and billing counts
it once.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, Field

from minicloud_shared.contracts.envelope import Payload, register, upcaster
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    AllocationReleased,
    PriceClass,
    ReleaseReason,
)
from minicloud_shared.contracts.topology import METERING_COMMANDS, METERING_USAGE

UsageKind = Literal["reading", "final", "adjustment"]
Unit = Literal["gpu", "gpu_milli", "vcpu_milli", "mig"]


def metered_unit(
    gpu_count: int, gpu_milli: int | None, cpu_milli: int | None, mig_profile: str | None = None
) -> tuple[Unit, int]:
    """What an allocation is metered in, and how many of that unit it holds: whole GPUs;
    a share's thousandths of its GPU; a MIG slice (one); CPU-only work's thousandths of
    a vCPU."""
    if mig_profile:
        return "mig", 1
    if gpu_milli:
        return "gpu_milli", gpu_milli
    if gpu_count == 0:
        return "vcpu_milli", cpu_milli or 0
    return "gpu", gpu_count


@register
class UsageRecorded(Payload):
    """GPU time of one allocation over ``[start, end)``; the tenant is the envelope's.

    ``reading``: a periodic reading of an open span. ``final``: the span's last part,
    up to the instant the allocation ended. ``adjustment``: a correction appended when
    the end arrived after readings had already covered time past it — it removes
    ``[start, end)`` again (``gpu_seconds`` is negative); history is never rewritten.
    """

    event_type: ClassVar[str] = "minicloud.metering.usage_recorded"
    stream: ClassVar[str] = METERING_USAGE

    usage_id: str = Field(description="Allocation id and sequence number", examples=["alloc-7f3a:3"])
    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    seq: int = Field(description="Sequence number within the allocation, from 1", examples=[3], ge=1)
    kind: UsageKind = Field(description="reading, final or adjustment", examples=["reading"])
    sku: str = Field(description="GPU SKU", examples=["h100-80gb-sxm"])
    region: str = Field(description="Region", examples=["eu-1"])
    price_class: PriceClass = Field(description="Price class decided at placement", examples=["on_demand"])
    gpus: int = Field(
        description="What the allocation holds, in ``unit``s: GPUs, thousandths of a GPU, or thousandths of a vCPU",
        examples=[8],
        ge=1,
    )
    start: AwareDatetime = Field(description="Span start, whole seconds (UTC)", examples=["2026-11-25T10:00:00Z"])
    end: AwareDatetime = Field(description="Span end, whole seconds (UTC)", examples=["2026-11-25T10:01:00Z"])
    gpu_seconds: int = Field(
        description="gpus x seconds of the span (in ``unit``-seconds); negative for an adjustment", examples=[480]
    )
    closes: bool = Field(description="The allocation's last record", examples=[False])
    allocation_seconds: int | None = Field(
        None, description="On the last record: the allocation's whole duration, seconds", examples=[3600]
    )
    release_reason: str | None = Field(
        None, description="On the last record: why the allocation ended", examples=["completed"]
    )
    unit: Unit = Field(
        "gpu",
        description="What gpus counts: gpu (whole GPUs), gpu_milli (a share, thousandths of one GPU), mig (MIG "
        "slices of mig_profile) or vcpu_milli (CPU-only work, thousandths of a vCPU)",
        examples=["gpu"],
    )
    memory_mib: int | None = Field(
        None, description="CPU-only work: the memory it holds, MiB (billed as MiB-seconds)", examples=[16_384]
    )
    mig_profile: str | None = Field(None, description="With unit mig: the slices' profile", examples=["1g.10gb"])


@register
class MeteringTick(Payload):
    """Internal: metering's clock ticked (open spans due a reading are read)."""

    event_type: ClassVar[str] = "minicloud.metering.tick"
    stream: ClassVar[str] = METERING_COMMANDS

    at: AwareDatetime = Field(description="The tick's instant (event time)", examples=["2026-11-25T10:00:00Z"])


@register
class ReconcileSpan(Payload):
    """The reconciler found an allocation's lifecycle facts (in scheduling's events) that
    metering's spans do not reflect: metering applies them as if they had just arrived.
    Applying facts already applied changes nothing. The tenant is the envelope's.
    Version 2: ``reason`` may be ``host_lost`` (as AllocationReleased v2). Version 3:
    ``gpu_count`` may be 0 (CPU-only work), with its share, CPU and memory."""

    event_type: ClassVar[str] = "minicloud.metering.reconcile_span"
    schema_version: ClassVar[int] = 3
    stream: ClassVar[str] = METERING_COMMANDS

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    sku: str = Field(description="GPU SKU", examples=["h100-80gb-sxm"])
    region: str = Field(description="Region", examples=["eu-1"])
    price_class: PriceClass = Field(description="Price class", examples=["on_demand"])
    gpu_count: int = Field(description="GPUs", examples=[8], ge=0)
    started_at: AwareDatetime = Field(description="When it started", examples=["2026-11-25T10:00:00Z"])
    released_at: AwareDatetime | None = Field(
        None, description="When it ended, if it did", examples=["2026-11-25T12:00:00Z"]
    )
    reason: ReleaseReason | None = Field(None, description="Why it ended", examples=["completed"])
    gpu_milli: int | None = Field(None, description="A share: thousandths of its GPU", examples=[250])
    cpu_milli: int | None = Field(None, description="CPU, thousandths of a vCPU", examples=[16_000])
    memory_mib: int | None = Field(None, description="Memory, MiB", examples=[131_072])
    mig_profile: str | None = Field(None, description="A MIG slice: its profile", examples=["1g.10gb"])

    def facts(self) -> tuple[AllocationPlaced, AllocationReleased | None]:
        placed = AllocationPlaced(
            allocation_id=self.allocation_id,
            workload_id=self.workload_id,
            sku=self.sku,
            region=self.region,
            price_class=self.price_class,
            gpus=[],
            gpu_count=self.gpu_count,
            started_at=self.started_at,
            gpu_milli=self.gpu_milli,
            cpu_milli=self.cpu_milli,
            memory_mib=self.memory_mib,
            mig_profile=self.mig_profile,
        )
        if self.released_at is None:
            return placed, None
        released = AllocationReleased(
            allocation_id=self.allocation_id,
            workload_id=self.workload_id,
            reason=self.reason or "completed",
            gpus=[],
            released_at=self.released_at,
        )
        return placed, released


@upcaster("minicloud.metering.reconcile_span", 1)
def _reconcile_v1(data: dict[str, Any]) -> dict[str, Any]:
    return data  # v2 only widened ``reason``


@upcaster("minicloud.metering.reconcile_span", 2)
def _reconcile_v2(data: dict[str, Any]) -> dict[str, Any]:
    return data  # v3 only widened ``gpu_count`` and added optional fields
