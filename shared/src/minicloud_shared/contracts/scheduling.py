"""Scheduling's contracts (the allocation lifecycle; the workload lifecycle follows).

An allocation is the unit everything downstream keys on: metering turns its
lifetime into GPU-seconds, billing prices them, inventory counts its GPUs as busy.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from minicloud_shared.contracts.envelope import Payload, register
from minicloud_shared.contracts.topology import SCHEDULING_EVENTS

PriceClass = Literal["on_demand", "spot", "reserved"]
ReleaseReason = Literal["completed", "cancelled", "preempted", "gpu_fault", "drain", "max_duration", "failed"]


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

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="The workload it serves", examples=["wl-42"])
    sku: str = Field(description="GPU SKU", examples=["h100-80gb-sxm"])
    region: str = Field(description="Region", examples=["eu-1"])
    price_class: PriceClass = Field(description="Decided at placement; billing never re-derives it", examples=["spot"])
    gpus: list[GpuSlice] = Field(
        description="Which GPUs on which hosts", examples=[[{"host_id": "eu1-a-r01-h01", "gpu_indices": [0, 1]}]]
    )
    gpu_count: int = Field(description="GPUs in total", examples=[2], ge=1)
    started_at: datetime = Field(
        description="When the allocation starts (event time)", examples=["2026-11-25T10:00:00Z"]
    )


@register
class AllocationReleased(_Event):
    """An allocation ended: the meter stops at ``released_at``."""

    event_type: ClassVar[str] = "minicloud.scheduling.allocation_released"

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="The workload it served", examples=["wl-42"])
    reason: ReleaseReason = Field(description="Why it ended", examples=["completed"])
    gpus: list[GpuSlice] = Field(
        description="The GPUs it held", examples=[[{"host_id": "eu1-a-r01-h01", "gpu_indices": [0, 1]}]]
    )
    released_at: datetime = Field(description="When it ended (event time)", examples=["2026-11-25T12:00:00Z"])
