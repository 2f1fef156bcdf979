"""The fleet's records and the rules for changing them. Pure: no I/O.

Every GPU of a host that has not left the fleet is in exactly one state, in this
order of precedence: ``faulted`` (out of service), ``allocated`` (scheduling gave it
to a workload), ``draining`` (free, but its host takes no new work: drained, or its
agent unreachable), ``free``.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from minicloud_shared.contracts.inventory import GpuMode
from minicloud_shared.skus import Sku, mig_layout_problem

HostState = Literal["active", "draining", "decommissioned"]
GpuState = Literal["free", "allocated", "faulted", "draining"]
GPU_STATES: tuple[GpuState, ...] = ("free", "allocated", "faulted", "draining")


class Refusal(Exception):
    """A command that cannot be applied; ``code`` is stable, ``reason`` is for a person."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Host(BaseModel):
    """A host's record, as inventory stores it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host_id: str
    region: str
    zone: str
    rack: str
    nvlink_domain: str
    sku: str
    gpu_count: int
    state: HostState = "active"
    drain_reason: str = ""
    faults: dict[int, str] = Field(default_factory=dict)  # GPU index -> fault code
    allocated: dict[int, str] = Field(default_factory=dict)  # GPU index -> allocation id
    address: str | None = None  # where its workloads are reached (its agent says)
    reachable: bool = True  # False once its agent fell silent (it had sent heartbeats)
    cpu_milli: int | None = None  # CPU it declared, thousandths of a vCPU (None: not declared)
    memory_mib: int | None = None
    gpu_mode: GpuMode = "whole"
    mig_layout: list[str] = Field(default_factory=list)  # MIG: the slices every GPU is partitioned into
    shares: dict[int, list[str]] = Field(default_factory=dict)  # shared GPU index -> allocation ids
    cpu_only: list[str] = Field(default_factory=list)  # allocations holding no GPU here (CPU-only work)

    def busy(self) -> list[str]:
        """The allocations running here, whole GPUs, shares or CPU only."""
        ids = set(self.allocated.values()) | set(self.cpu_only)
        for held in self.shares.values():
            ids.update(held)
        return sorted(ids)

    def gpu_id(self, index: int) -> str:
        return f"{self.host_id}/gpu{index}"

    def gpu_states(self) -> Counter[GpuState]:
        """How many of its GPUs are in each state (none once decommissioned)."""
        counts: Counter[GpuState] = Counter()
        if self.state == "decommissioned":
            return counts
        for index in range(self.gpu_count):
            if index in self.faults:
                counts["faulted"] += 1
            elif index in self.allocated or index in self.shares:
                counts["allocated"] += 1
            elif self.state == "draining" or not self.reachable:
                counts["draining"] += 1
            else:
                counts["free"] += 1
        return counts


class Unchanged(Exception):
    """The command asks for what is already true: no new record, no event."""


def unreachable(host: Host) -> Host | None:
    """The host once its agent fell silent (None: already unreachable, or gone)."""
    if not host.reachable or host.state == "decommissioned":
        return None
    return host.model_copy(update={"reachable": False})


def reachable(host: Host) -> Host | None:
    """The host once its agent is heard again (None: it was not unreachable)."""
    if host.reachable or host.state == "decommissioned":
        return None
    return host.model_copy(update={"reachable": True})


def _known(host: Host | None, host_id: str) -> Host:
    if host is None:
        raise Refusal("unknown_host", f"no host {host_id} is registered")
    if host.state == "decommissioned":
        raise Refusal("decommissioned", f"host {host_id} was decommissioned")
    return host


def register(
    existing: Host | None,
    *,
    host_id: str,
    region: str,
    zone: str,
    rack: str,
    nvlink_domain: str,
    sku: str,
    gpu_count: int,
    catalog: dict[str, Sku],
    address: str | None = None,
    again_ok: bool = False,
    cpu_milli: int | None = None,
    memory_mib: int | None = None,
    gpu_mode: GpuMode = "whole",
    mig_layout: list[str] | None = None,
) -> Host:
    """A new host. ``again_ok``: the host's own agent registering it again (at every
    start): the same host is no change, or a new address; for anyone else (an operator)
    a host id that exists is refused."""
    if again_ok and existing is not None and existing.state != "decommissioned":
        same = (existing.region, existing.zone, existing.rack, existing.nvlink_domain, existing.sku, existing.gpu_count)
        if same == (region, zone, rack, nvlink_domain, sku, gpu_count):
            # An agent registering its host again (every start): the same host. Only
            # its address and the CPU and memory it gives may change (an operator's
            # GPU mode stays); anything else is another host under this id.
            if (existing.address, existing.cpu_milli, existing.memory_mib) == (address, cpu_milli, memory_mib):
                raise Unchanged()
            return existing.model_copy(update={"address": address, "cpu_milli": cpu_milli, "memory_mib": memory_mib})
    if existing is not None:
        when = "was decommissioned (host ids are never reused)" if existing.state == "decommissioned" else "exists"
        raise Refusal("duplicate_host", f"host {host_id} already {when}")
    if sku not in catalog:
        raise Refusal("unknown_sku", f"unknown GPU SKU {sku!r}; known: {', '.join(sorted(catalog))}")
    layout = _layout(catalog[sku], gpu_mode, mig_layout)
    return Host(
        host_id=host_id,
        region=region,
        zone=zone,
        rack=rack,
        nvlink_domain=nvlink_domain,
        sku=sku,
        gpu_count=gpu_count,
        address=address,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        gpu_mode=gpu_mode,
        mig_layout=layout,
    )


def _layout(sku: Sku, mode: GpuMode, layout: list[str] | None) -> list[str]:
    """The MIG layout a mode takes: none unless ``mig``, and then a valid one."""
    if mode != "mig":
        if layout:
            raise Refusal("bad_mig_layout", "a MIG layout goes with gpu_mode mig")
        return []
    problem = mig_layout_problem(sku, layout or [])
    if problem:
        raise Refusal("bad_mig_layout", problem)
    return list(layout or [])


def set_gpu_mode(
    host: Host | None,
    host_id: str,
    mode: GpuMode,
    mig_layout: list[str] | None = None,
    catalog: dict[str, Sku] | None = None,
) -> Host:
    """A host's GPUs given whole, also shared, or as MIG slices of a layout: changed
    only while nothing runs on it."""
    h = _known(host, host_id)
    layout = _layout((catalog or {})[h.sku], mode, mig_layout) if catalog is not None else list(mig_layout or [])
    if h.gpu_mode == mode and h.mig_layout == layout:
        raise Unchanged()
    busy = h.busy()
    if busy:
        raise Refusal(
            "host_busy",
            f"host {host_id} runs {len(busy)} allocation(s) ({', '.join(busy[:5])}): a GPU's mode changes only "
            "when it is idle; drain the host and wait until they end",
        )
    return h.model_copy(update={"gpu_mode": mode, "mig_layout": layout})


def drain(host: Host | None, host_id: str, reason: str) -> Host:
    h = _known(host, host_id)
    if h.state == "draining":
        raise Refusal("already_drained", f"host {host_id} is already draining ({h.drain_reason or 'no reason given'})")
    return h.model_copy(update={"state": "draining", "drain_reason": reason})


def undrain(host: Host | None, host_id: str) -> Host:
    h = _known(host, host_id)
    if h.state != "draining":
        raise Refusal("not_drained", f"host {host_id} is not draining")
    return h.model_copy(update={"state": "active", "drain_reason": ""})


def decommission(host: Host | None, host_id: str) -> Host:
    h = _known(host, host_id)
    if h.busy():
        allocations = h.busy()
        raise Refusal(
            "host_busy",
            f"host {host_id} still runs {len(allocations)} allocation(s) ({', '.join(allocations[:5])}): "
            "drain it and wait until they end",
        )
    return h.model_copy(update={"state": "decommissioned"})


def _index(h: Host, index: int) -> None:
    if not 0 <= index < h.gpu_count:
        raise Refusal("bad_gpu_index", f"host {h.host_id} has GPUs 0 to {h.gpu_count - 1}, not {index}")


def fault(host: Host | None, host_id: str, index: int, code: str) -> Host:
    h = _known(host, host_id)
    _index(h, index)
    if index in h.faults:
        raise Refusal("already_faulted", f"GPU {h.gpu_id(index)} is already faulted ({h.faults[index]})")
    return h.model_copy(update={"faults": {**h.faults, index: code}})


def clear(host: Host | None, host_id: str, index: int) -> Host:
    h = _known(host, host_id)
    _index(h, index)
    if index not in h.faults:
        raise Refusal("not_faulted", f"GPU {h.gpu_id(index)} is not faulted")
    return h.model_copy(update={"faults": {k: v for k, v in h.faults.items() if k != index}})


def allocate(h: Host, indices: list[int], allocation_id: str, shared: bool = False) -> Host:
    """Record that scheduling placed ``allocation_id`` on these GPUs (a fact, not a
    request): whole, or a share of each (``shared``); no GPU: CPU-only work."""
    if not indices:
        return h.model_copy(update={"cpu_only": sorted({*h.cpu_only, allocation_id})})
    if shared:
        shares = {g: list(a) for g, a in h.shares.items()}
        for g in indices:
            if allocation_id not in shares.setdefault(g, []):
                shares[g].append(allocation_id)
        return h.model_copy(update={"shares": shares})
    return h.model_copy(update={"allocated": {**h.allocated, **dict.fromkeys(indices, allocation_id)}})


def release(h: Host, allocation_id: str) -> Host:
    shares = {g: [a for a in held if a != allocation_id] for g, held in h.shares.items()}
    return h.model_copy(
        update={
            "allocated": {k: v for k, v in h.allocated.items() if v != allocation_id},
            "shares": {g: held for g, held in shares.items() if held},
            "cpu_only": [a for a in h.cpu_only if a != allocation_id],
        }
    )
