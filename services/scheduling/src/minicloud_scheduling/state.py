"""Scheduling's records (stored as versioned aggregates; their keys are in ``store``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from minicloud_scheduling.placement import MILLI, NO_SLICES, HostView, Placement, Request
from minicloud_shared.contracts.agent import RunSpec
from minicloud_shared.contracts.scheduling import PriceClass, SubmitWorkload, WorkloadKind

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


CLASS_RANK = {"reserved": 0, "on_demand": 1, "spot": 2}


def queue_score(priority: int, submitted_at: datetime, price_class: str = "on_demand") -> float:
    """Reserved before on-demand before spot; then higher priority; then first come,
    first served. Exact in a double: rank * 2**51 + (1000 - priority) * 2**41 + ms."""
    ms = min(2**41 - 1, max(0, int((submitted_at - EPOCH).total_seconds() * 1000)))
    return float(CLASS_RANK[price_class] * 2**51 + (1000 - priority) * 2**41 + ms)


class HostRecord(BaseModel):
    """Scheduling's view of a host, built from inventory's facts and its own allocations."""

    model_config = ConfigDict(extra="forbid")

    host_id: str
    sku: str
    region: str
    zone: str
    rack: str
    nvlink_domain: str
    gpu_count: int
    schedulable: bool = True  # False while drained or decommissioned
    reachable: bool = True  # False while its agent is silent (inventory's HostUnreachable)
    address: str | None = None  # where its workloads are reached (set by its agent)
    faults: list[int] = Field(default_factory=list)
    allocated: dict[int, str] = Field(default_factory=dict)  # GPU index -> allocation id
    inventory_generation: int = 0  # facts older than this are stale and ignored
    gpu_mode: Literal["whole", "shared", "mig"] = "whole"
    mig_layout: list[str] = Field(default_factory=list)  # MIG: the slices every GPU is partitioned into
    mig_held: dict[str, str] = Field(default_factory=dict)  # MIG: "<GPU>/<slice>" -> allocation id
    cpu_milli: int = 0  # declared CPU, thousandths of a vCPU (0: not declared)
    memory_mib: int = 0
    # Shared GPUs: GPU index -> {allocation id: thousandths it holds}.
    shares: dict[int, dict[str, int]] = Field(default_factory=dict)
    # allocation id -> (CPU thousandths, memory MiB) it holds here.
    resources: dict[str, tuple[int, int]] = Field(default_factory=dict)

    def free(self) -> set[int]:
        """GPUs free to be given whole (none on a MIG host: its GPUs are sliced)."""
        if self.gpu_mode == "mig":
            return set()
        return set(range(self.gpu_count)) - set(self.faults) - set(self.allocated) - set(self.shares)

    def mig_free(self) -> set[tuple[int, int]]:
        """(GPU, slice) of a MIG host that no allocation holds, on GPUs not faulted."""
        if self.gpu_mode != "mig":
            return set()
        return {
            (g, i)
            for g in range(self.gpu_count)
            if g not in self.faults
            for i in range(len(self.mig_layout))
            if f"{g}/{i}" not in self.mig_held
        }

    def partial(self) -> dict[int, int]:
        """Shared GPUs in use, and the thousandths each has left (none if full or faulted)."""
        out = {}
        for gpu, held in self.shares.items():
            left = MILLI - sum(held.values())
            if left > 0 and gpu not in self.faults:
                out[gpu] = left
        return out

    def cpu_free(self) -> tuple[int, int]:
        cpu = sum(c for c, _ in self.resources.values())
        mem = sum(m for _, m in self.resources.values())
        return self.cpu_milli - cpu, self.memory_mib - mem

    def allocations(self, indices: set[int] | None = None) -> set[str]:
        """The allocations holding anything here (on ``indices``, if given)."""
        ids = {a for i, a in self.allocated.items() if indices is None or i in indices}
        for gpu, held in self.shares.items():
            if indices is None or gpu in indices:
                ids.update(held)
        for key, held_by in self.mig_held.items():
            if indices is None or int(key.split("/")[0]) in indices:
                ids.add(held_by)
        if indices is None:
            ids.update(self.resources)
        return ids

    def holds(self, allocation_id: str, p: Placement, i: int) -> HostRecord:
        """The record with slice ``i`` of ``p`` given to ``allocation_id``."""
        _, gpus = p.slices[i]
        update: dict[str, Any] = {}
        if p.mig_profile:
            update["mig_held"] = {**self.mig_held, f"{gpus[0]}/{p.mig_instance}": allocation_id}
        elif p.gpu_milli:
            shares = {g: dict(h) for g, h in self.shares.items()}
            for g in gpus:
                shares.setdefault(g, {})[allocation_id] = p.gpu_milli
            update["shares"] = shares
        elif gpus:
            update["allocated"] = {**self.allocated, **dict.fromkeys(gpus, allocation_id)}
        if p.resources and self.cpu_milli:
            update["resources"] = {**self.resources, allocation_id: p.resources[i]}
        return self.model_copy(update=update)

    def without(self, allocation_id: str) -> HostRecord:
        """The record with what ``allocation_id`` held here given back."""
        shares = {g: {a: m for a, m in h.items() if a != allocation_id} for g, h in self.shares.items()}
        return self.model_copy(
            update={
                "allocated": {i: a for i, a in self.allocated.items() if a != allocation_id},
                "shares": {g: h for g, h in shares.items() if h},
                "resources": {a: r for a, r in self.resources.items() if a != allocation_id},
                "mig_held": {k: a for k, a in self.mig_held.items() if a != allocation_id},
            }
        )

    def has_room(self, p: Placement, i: int) -> bool:
        """Whether slice ``i`` of ``p`` is free in this record (whatever a view says)."""
        _, gpus = p.slices[i]
        if p.mig_profile:
            j = p.mig_instance
            if (gpus[0], j) not in self.mig_free() or self.mig_layout[j] != p.mig_profile:
                return False
        elif p.gpu_milli:
            (gpu,) = gpus
            if self.gpu_mode != "shared" or gpu in self.faults or gpu in self.allocated:
                return False
            if gpu not in self.shares and gpu not in self.free():
                return False
            if sum(self.shares.get(gpu, {}).values()) + p.gpu_milli > MILLI:
                return False
        elif not set(gpus) <= self.free():
            return False
        if p.resources and self.cpu_milli:
            cpu, mem = self.cpu_free()
            if p.resources[i][0] > cpu or p.resources[i][1] > mem:
                return False
        return True

    @property
    def placeable(self) -> bool:
        return self.schedulable and self.reachable

    def view(self, version: int) -> HostView:
        cpu, mem = self.cpu_free()
        return HostView(
            self.host_id,
            self.sku,
            self.region,
            self.zone,
            self.rack,
            self.nvlink_domain,
            self.gpu_count,
            self.free(),
            self.placeable,
            version,
            shared=self.gpu_mode == "shared",
            partial=self.partial(),
            cpu_milli=self.cpu_milli,
            memory_mib=self.memory_mib,
            cpu_free=cpu,
            memory_free=mem,
            mig=tuple(self.mig_layout) if self.gpu_mode == "mig" else (),
            mig_free=self.mig_free() if self.gpu_mode == "mig" else NO_SLICES,
        )


def asked_skus(sku: str | None, skus: list[str] | None) -> tuple[str | None, list[str] | None]:
    """A submission's ``(sku, skus)`` as a workload keeps them: one SKU (named, or a set
    of one) is ``sku``; several are ``skus``, sorted; ``sku`` wins if both are given;
    neither is any SKU."""
    if sku is not None or not skus:
        return sku, None
    distinct = sorted(set(skus))
    return (distinct[0], None) if len(distinct) == 1 else (None, distinct)


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload_id: str
    tenant_id: str
    name: str
    kind: WorkloadKind
    sku: str | None
    gpus_per_node: int
    skus: list[str] | None = None  # with sku None: any one of these (sorted); both None: any SKU
    gpu_milli: int | None = None  # a share of one GPU (gpus_per_node 0)
    mig_profile: str | None = None  # a MIG slice of one GPU (gpus_per_node 0)
    cpu_milli: int | None = None  # per node; None: the GPUs' part of the host's
    memory_mib: int | None = None
    nodes: int
    region: str | None
    price_class: PriceClass
    priority: int
    max_duration_s: int
    client_command_id: str
    submitted_at: datetime
    # The request that submitted it (its SubmitWorkload's correlation id): every event
    # made on its behalf carries it, also those made on a tick. None: stored before.
    correlation_id: str | None = None
    status: Literal["queued", "running", "completed", "cancelled", "failed"] = "queued"
    pending_code: str = ""
    pending_reason: str = ""
    allocation_id: str | None = None
    allocations: int = 0  # how many allocations it has had (requeues start new ones)
    placed_sku: str | None = None
    placed_region: str | None = None
    slices: list[tuple[str, list[int]]] = Field(default_factory=list)
    started_at: datetime | None = None
    stop_at: datetime | None = None  # a spot workload under notice is stopped then
    preempted_for: str | None = None  # ... to make room for this workload
    run: RunSpec | None = None  # what its hosts' agents run (None: the tenant runs it and completes it)
    exited: list[int] = Field(default_factory=list)  # ranks of the current allocation that exited 0
    exited_at: datetime | None = None  # the latest of those exits

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def gpus_held(self) -> int:
        """GPUs it holds while running, whole or in part (what its quota counts): a
        share holds one; CPU-only work none."""
        return self.gpus if self.gpus_per_node else (1 if self.gpu_milli or self.mig_profile else 0)

    @property
    def accepts(self) -> frozenset[str] | None:
        """The SKUs it may run on; None: any."""
        if self.sku is not None:
            return frozenset((self.sku,))
        return frozenset(self.skus) if self.skus else None

    def request(self) -> Request:
        """What it asks of placement."""
        return Request(
            self.gpus_per_node,
            self.nodes,
            self.sku,
            self.region,
            tuple(self.skus) if self.skus else None,
            self.gpu_milli or 0,
            self.cpu_milli,
            self.memory_mib,
            self.mig_profile,
        )

    def same_request(self, c: SubmitWorkload, tenant_id: str) -> bool:
        return (
            self.tenant_id == tenant_id
            and (self.name, self.kind, (self.sku, self.skus), self.gpus_per_node, self.nodes, self.region)
            == (c.name, c.kind, asked_skus(c.sku, c.skus), c.gpus_per_node, c.nodes, c.region)
            and (self.price_class, self.priority, self.max_duration_s) == (c.price_class, c.priority, c.max_duration_s)
            and (self.gpu_milli, self.cpu_milli, self.memory_mib, self.mig_profile)
            == (c.gpu_milli, c.cpu_milli, c.memory_mib, c.mig_profile)
            and self.run == c.run
        )


class Reservation(BaseModel):
    """Reserved capacity an operator granted: the reserved price and queue rank apply
    to the tenant's reserved work within these GPUs and this term."""

    model_config = ConfigDict(extra="forbid")

    sku: str
    region: str
    gpus: int
    starts_at: datetime
    ends_at: datetime

    def in_force(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at


class Quota(BaseModel):
    """A tenant's limits (``sku|region``, either may be ``*``) and what it holds (exact keys)."""

    model_config = ConfigDict(extra="forbid")

    limits: dict[str, int] = Field(default_factory=dict)
    used: dict[str, int] = Field(default_factory=dict)
    reservations: dict[str, Reservation] = Field(default_factory=dict)  # by id
    reserved_used: dict[str, int] = Field(default_factory=dict)  # GPUs held within them, by sku|region

    def blocking(self, sku: str, region: str, gpus: int) -> tuple[str, int, int] | None:
        """The first limit that ``gpus`` more of ``sku`` in ``region`` would exceed: (key, held, limit)."""
        for key, limit in sorted(self.limits.items()):
            lsku, lregion = key.split("|")
            if lsku not in ("*", sku) or lregion not in ("*", region):
                continue
            held = sum(
                n for k, n in self.used.items() if lsku in ("*", k.split("|")[0]) and lregion in ("*", k.split("|")[1])
            )
            if held + gpus > limit:
                return key, held, limit
        return None

    def add(self, sku: str, region: str, gpus: int, reserved: bool = False) -> Quota:
        """``gpus`` more (or fewer) held of ``sku`` in ``region``; ``reserved``: within a reservation."""
        key = f"{sku}|{region}"
        used = {**self.used, key: self.used.get(key, 0) + gpus}
        update: dict[str, Any] = {"used": {k: v for k, v in used.items() if v}}
        if reserved:
            held = {**self.reserved_used, key: self.reserved_used.get(key, 0) + gpus}
            update["reserved_used"] = {k: v for k, v in held.items() if v}
        return self.model_copy(update=update)

    def reserved_room(self, sku: str, region: str, now: datetime) -> tuple[int, int]:
        """(GPUs reserved for ``sku`` in ``region`` in force at ``now``, of which in use)."""
        total = sum(
            r.gpus for r in self.reservations.values() if (r.sku, r.region) == (sku, region) and r.in_force(now)
        )
        return total, self.reserved_used.get(f"{sku}|{region}", 0)
