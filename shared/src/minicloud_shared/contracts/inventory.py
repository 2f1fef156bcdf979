"""Inventory's contracts: commands to it, and the facts it publishes about the fleet.

The physical world is a tree — region → zone → rack → NVLink domain → host → GPU —
and every host carries a generation: the version of its record, raised by each
change, so a consumer can tell an old fact from a new one.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from minicloud_shared.contracts.envelope import Payload, register
from minicloud_shared.contracts.topology import INVENTORY_COMMANDS, INVENTORY_EVENTS

_ID = r"^[a-z0-9][a-z0-9\-_.]{0,62}$"

GpuMode = Literal["whole", "shared", "mig"]
MIG_LAYOUT = (
    "With gpu_mode mig: the MIG slices every GPU of the host is partitioned into (profiles of its SKU, e.g. "
    "3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb)"
)
MIG_EXAMPLE = [["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]]


class _Command(Payload):
    stream: ClassVar[str] = INVENTORY_COMMANDS


class _Event(Payload):
    stream: ClassVar[str] = INVENTORY_EVENTS


@register
class RegisterHost(_Command):
    """Add a host and its GPUs to the fleet."""

    event_type: ClassVar[str] = "minicloud.inventory.register_host"

    host_id: str = Field(description="Host id, unique in the fleet", examples=["eu1-a-r01-h01"], pattern=_ID)
    region: str = Field(description="Region", examples=["eu-1"], pattern=_ID)
    zone: str = Field(description="Availability zone within the region", examples=["eu-1a"], pattern=_ID)
    rack: str = Field(description="Rack within the zone", examples=["eu-1a-r01"], pattern=_ID)
    nvlink_domain: str = Field(
        description="NVLink domain: the hosts whose GPUs share one NVLink fabric (a host, or an NVL72 rack)",
        examples=["eu-1a-r01-nvl0"],
        pattern=_ID,
    )
    sku: str = Field(description="GPU SKU (see the catalog)", examples=["h100-80gb-sxm"])
    gpu_count: int = Field(description="GPUs on the host", examples=[8], ge=1, le=72)
    address: str | None = Field(
        None,
        description="Where the host's workloads are reached (gang rendezvous, endpoints); set by its agent",
        examples=["10.0.0.11"],
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-:]*$",
    )
    cpu_milli: int | None = Field(
        None,
        description="CPU it gives to workloads, in thousandths of a vCPU (its agent discovers it); null: not "
        "declared (CPU and memory are then not checked on it, and it takes no CPU-only work)",
        examples=[224_000],
        ge=1000,
        le=10_000_000,
    )
    memory_mib: int | None = Field(
        None, description="Memory it gives to workloads, MiB", examples=[2_097_152], ge=1024, le=1 << 30
    )
    gpu_mode: GpuMode = Field(
        "whole",
        description="whole: each GPU goes to one workload; shared: GPUs may also be given as time-sliced "
        "shares (gpu_milli) to several workloads; mig: each GPU is partitioned into the MIG slices of mig_layout",
        examples=["shared"],
    )
    mig_layout: list[str] | None = Field(None, max_length=7, description=MIG_LAYOUT, examples=MIG_EXAMPLE)


@register
class DrainHost(_Command):
    """Stop placing new work on a host; running work continues or is requeued by scheduling."""

    event_type: ClassVar[str] = "minicloud.inventory.drain_host"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    reason: str = Field(description="Why, for the operators' log", examples=["firmware upgrade"], max_length=500)


@register
class UndrainHost(_Command):
    """Make a drained host schedulable again."""

    event_type: ClassVar[str] = "minicloud.inventory.undrain_host"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])


@register
class DecommissionHost(_Command):
    """Remove a host from the fleet for good (refused while work runs on it)."""

    event_type: ClassVar[str] = "minicloud.inventory.decommission_host"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])


@register
class SetGpuMode(_Command):
    """An operator chooses whether a host's GPUs are given whole, also as time-sliced
    shares, or as MIG slices (with their layout). Refused (``host_busy``) while work runs
    on the host: a GPU's mode changes only when it is idle; ``bad_mig_layout`` for a
    layout its GPUs cannot take."""

    event_type: ClassVar[str] = "minicloud.inventory.set_gpu_mode"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    gpu_mode: GpuMode = Field(description="whole, shared or mig", examples=["shared"])
    mig_layout: list[str] | None = Field(None, max_length=7, description=MIG_LAYOUT, examples=MIG_EXAMPLE)


@register
class ReportGpuFault(_Command):
    """A GPU failed (for example an NVIDIA Xid error): take it out of service."""

    event_type: ClassVar[str] = "minicloud.inventory.report_gpu_fault"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    gpu_index: int = Field(description="GPU index on the host, from 0", examples=[3], ge=0)
    code: str = Field(description="Fault code", examples=["xid-79"], min_length=1, max_length=64)
    detail: str = Field("", description="What the node agent saw", examples=["GPU has fallen off the bus"])


@register
class ClearGpuFault(_Command):
    """A faulted GPU was repaired or replaced: back in service."""

    event_type: ClassVar[str] = "minicloud.inventory.clear_gpu_fault"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    gpu_index: int = Field(description="GPU index on the host, from 0", examples=[3], ge=0)


@register
class HostRegistered(_Event):
    """A host joined the fleet."""

    event_type: ClassVar[str] = "minicloud.inventory.host_registered"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    region: str = Field(description="Region", examples=["eu-1"])
    zone: str = Field(description="Zone", examples=["eu-1a"])
    rack: str = Field(description="Rack", examples=["eu-1a-r01"])
    nvlink_domain: str = Field(description="NVLink domain", examples=["eu-1a-r01-nvl0"])
    sku: str = Field(description="GPU SKU", examples=["h100-80gb-sxm"])
    gpu_ids: list[str] = Field(description="Its GPUs' ids, by index", examples=[["eu1-a-r01-h01/gpu0"]])
    generation: int = Field(description="The host record's generation after this change", examples=[1], ge=1)
    address: str | None = Field(None, description="Where its workloads are reached", examples=["10.0.0.11"])
    cpu_milli: int | None = Field(
        None, description="CPU it gives to workloads, thousandths of a vCPU (null: not declared)", examples=[224_000]
    )
    memory_mib: int | None = Field(None, description="Memory it gives to workloads, MiB", examples=[2_097_152])
    gpu_mode: GpuMode = Field("whole", description="whole, shared (time-sliced) or mig", examples=["shared"])
    mig_layout: list[str] | None = Field(None, description=MIG_LAYOUT, examples=MIG_EXAMPLE)


@register
class GpuModeSet(_Event):
    """A host's GPUs are now given whole, or also as shares."""

    event_type: ClassVar[str] = "minicloud.inventory.gpu_mode_set"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    gpu_mode: GpuMode = Field(description="whole, shared or mig", examples=["shared"])
    generation: int = Field(description="Generation after this change", examples=[2], ge=1)
    mig_layout: list[str] | None = Field(None, description=MIG_LAYOUT, examples=MIG_EXAMPLE)


@register
class HostDrained(_Event):
    """No new work goes to this host."""

    event_type: ClassVar[str] = "minicloud.inventory.host_drained"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    reason: str = Field(description="Why", examples=["firmware upgrade"])
    generation: int = Field(description="Generation after this change", examples=[2], ge=1)


@register
class HostUndrained(_Event):
    """The host takes new work again."""

    event_type: ClassVar[str] = "minicloud.inventory.host_undrained"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    generation: int = Field(description="Generation after this change", examples=[3], ge=1)


@register
class HostDecommissioned(_Event):
    """The host left the fleet."""

    event_type: ClassVar[str] = "minicloud.inventory.host_decommissioned"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    generation: int = Field(description="Generation after this change", examples=[4], ge=1)


@register
class GpuFaulted(_Event):
    """A GPU is out of service; work on it must stop (time on it is not charged)."""

    event_type: ClassVar[str] = "minicloud.inventory.gpu_faulted"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    gpu_id: str = Field(description="GPU id", examples=["eu1-a-r01-h01/gpu3"])
    gpu_index: int = Field(description="GPU index on the host", examples=[3])
    code: str = Field(description="Fault code", examples=["xid-79"])
    detail: str = Field(description="What was seen", examples=["GPU has fallen off the bus"])
    generation: int = Field(description="Generation after this change", examples=[5], ge=1)


@register
class GpuFaultCleared(_Event):
    """A GPU is back in service."""

    event_type: ClassVar[str] = "minicloud.inventory.gpu_fault_cleared"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    gpu_id: str = Field(description="GPU id", examples=["eu1-a-r01-h01/gpu3"])
    gpu_index: int = Field(description="GPU index on the host", examples=[3])
    generation: int = Field(description="Generation after this change", examples=[6], ge=1)


@register
class HostUnreachable(_Event):
    """The host's agent fell silent: its work is lost (charged up to ``last_seen_at``)."""

    event_type: ClassVar[str] = "minicloud.inventory.host_unreachable"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    last_seen_at: AwareDatetime = Field(description="Its last heartbeat", examples=["2026-11-25T10:00:00Z"])
    generation: int = Field(description="Generation after this change", examples=[7], ge=1)


@register
class HostReachable(_Event):
    """An unreachable host's agent is back: the host takes work again."""

    event_type: ClassVar[str] = "minicloud.inventory.host_reachable"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    generation: int = Field(description="Generation after this change", examples=[8], ge=1)


@register
class InventoryTick(_Command):
    """Internal: inventory's clock ticked (silent hosts are checked)."""

    event_type: ClassVar[str] = "minicloud.inventory.tick"

    at: AwareDatetime = Field(description="The tick's instant (event time)", examples=["2026-11-25T10:00:00Z"])


@register
class InventoryCommandRejected(_Event):
    """A command inventory refused, and why, in words for the person who sent it."""

    event_type: ClassVar[str] = "minicloud.inventory.command_rejected"

    command_type: str = Field(description="The refused command's type", examples=["minicloud.inventory.register_host"])
    command_id: str = Field(description="The refused command's event id", examples=["2f1c..."])
    host_id: str = Field(description="The host it named", examples=["eu1-a-r01-h01"])
    code: str = Field(
        description="Stable reason code: unknown_host, duplicate_host, unknown_sku, host_busy, "
        "decommissioned, bad_gpu_index, not_faulted, already_faulted, not_drained, already_drained, bad_mig_layout",
        examples=["unknown_host"],
    )
    reason: str = Field(description="The reason, for a person", examples=["no host eu1-a-r01-h01 is registered"])
