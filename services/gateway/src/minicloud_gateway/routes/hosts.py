"""The fleet: hosts (the operator's), capacity, and what is available (public)."""

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from minicloud_gateway import schemas as sc
from minicloud_gateway.commands import command
from minicloud_gateway.deps import ID, TEXT, Gateway, IdemKey, IdPath, IdQuery, Int, Operator, State, anonymous
from minicloud_gateway.guard import ApiError
from minicloud_gateway.store import HOSTS, host_key, members, read_doc, read_docs
from minicloud_shared.contracts.inventory import (
    ClearGpuFault,
    DecommissionHost,
    DrainHost,
    GpuMode,
    RegisterHost,
    ReportGpuFault,
    SetGpuMode,
    UndrainHost,
)
from minicloud_shared.skus import MIG_PROFILE, skus

ops = APIRouter(tags=["operator"], responses=sc.AUTH)
public = APIRouter(tags=["public"], dependencies=[Depends(anonymous)])
# An operator's command on a target that may not exist (404) or a reused key (409).
OP_ON_TARGET: dict[str, Any] = {"response_model": sc.Operation, "responses": sc.errors(404, 409)}


# With gpu_mode mig: the MIG slices every GPU of the host is partitioned into.
MigLayout = Annotated[
    list[Annotated[str, Field(pattern=MIG_PROFILE)]] | None,
    Field(max_length=7, description="With gpu_mode mig: the slices of every GPU", examples=[["3g.40gb", "4g.40gb"]]),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostIn(_Body):
    host_id: str = Field(pattern=ID, examples=["eu1-a-r01-h01"])
    region: str = Field(pattern=ID, examples=["eu-1"])
    zone: str = Field(pattern=ID, examples=["eu-1a"])
    rack: str = Field(pattern=ID, examples=["eu-1a-r01"])
    nvlink_domain: str = Field(pattern=ID, examples=["eu-1a-r01-nvl0"])
    sku: str = Field(pattern=ID, max_length=63, examples=["h100-80gb-sxm"])
    gpu_count: Int = Field(ge=1, le=72, examples=[8])
    address: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-:]*$",
        description="Where its workloads are reached (its agent sets it when it registers the host)",
        examples=["10.0.0.11"],
    )
    cpu_milli: Int | None = Field(
        None,
        ge=1000,
        le=10_000_000,
        description="CPU it gives to workloads, thousandths of a vCPU (its agent discovers it); unset: not "
        "declared (CPU and memory not checked, no CPU-only work)",
        examples=[224_000],
    )
    memory_mib: Int | None = Field(
        None, ge=1024, le=1 << 30, description="Memory it gives to workloads, MiB", examples=[2_097_152]
    )
    gpu_mode: GpuMode = Field(
        "whole",
        description="whole; shared: its GPUs may also be given as time-sliced shares; mig: partitioned into the "
        "slices of mig_layout",
        examples=["shared"],
    )
    mig_layout: MigLayout = None


class GpuModeIn(_Body):
    gpu_mode: GpuMode = Field(description="whole, shared or mig", examples=["shared"])
    mig_layout: MigLayout = None


class DrainIn(_Body):
    reason: str = Field("", max_length=500, pattern=TEXT, examples=["firmware upgrade"])


class FaultIn(_Body):
    gpu_index: Int = Field(ge=0, le=71, examples=[3])
    code: str = Field(min_length=1, max_length=64, pattern=ID, examples=["xid-79"])
    detail: str = Field("", max_length=500, pattern=TEXT, examples=["GPU has fallen off the bus"])


async def hosts_of(redis: Redis) -> list[dict[str, Any]]:
    docs = await read_docs(redis, [host_key(h) for h in await members(redis, HOSTS)])
    return [host_view(d) for d in docs if d is not None]


async def _hosts(g: Gateway) -> list[dict[str, Any]]:
    return await hosts_of(g.redis)


async def _known_host(g: Gateway, host_id: str) -> dict[str, Any]:
    doc = await read_doc(g.redis, host_key(host_id))
    if doc is None or not doc.get("sku"):  # events about it came, its registration not yet
        raise ApiError(404, "not_found", f"no host {host_id}")
    return doc


@ops.post("/v1/hosts", status_code=202, response_model=sc.Operation, responses=sc.errors(409))
async def register_host(body: HostIn, _: Operator, g: State, idempotency_key: IdemKey = None) -> JSONResponse:
    """Add a host and its GPUs to the fleet."""
    what = f"register host {body.host_id}"
    return await command(g, RegisterHost(**body.model_dump()), what, idempotency_key, body.host_id)


@ops.get("/v1/hosts", response_model=sc.Hosts)
async def list_hosts(
    _: Operator,
    g: State,
    region: IdQuery = None,
    sku: IdQuery = None,
    state: IdQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: IdQuery = None,
) -> dict[str, Any]:
    """The fleet's hosts by id, with state and GPUs free, allocated and faulted."""
    rows = [
        h
        for h in await _hosts(g)
        if h.get("sku")
        and (region is None or h["region"] == region)
        and (sku is None or h["sku"] == sku)
        and (state is None or h["state"] == state)
        and (after is None or h["host_id"] > after)
    ]
    page = rows[:limit]
    return {"items": page, "next": page[-1]["host_id"] if len(rows) > limit else None}


@ops.get("/v1/hosts/{host_id}", response_model=sc.HostOut, responses=sc.errors(404))
async def get_host(host_id: IdPath, _: Operator, g: State) -> dict[str, Any]:
    return host_view(await _known_host(g, host_id))


@ops.post("/v1/hosts/{host_id}/drain", status_code=202, **OP_ON_TARGET)
async def drain(host_id: IdPath, body: DrainIn, _: Operator, g: State, idempotency_key: IdemKey = None) -> JSONResponse:
    """Stop placing work on a host; its running work is requeued elsewhere."""
    await _known_host(g, host_id)
    cmd = DrainHost(host_id=host_id, reason=body.reason or "drained by the operator")
    return await command(g, cmd, f"drain {host_id}", idempotency_key, host_id)


@ops.post("/v1/hosts/{host_id}/gpu-mode", status_code=202, **OP_ON_TARGET)
async def set_gpu_mode(
    host_id: IdPath, body: GpuModeIn, _: Operator, g: State, idempotency_key: IdemKey = None
) -> JSONResponse:
    """Give the host's GPUs whole, or also as time-sliced shares. Refused (``host_busy``)
    while work runs on the host: a GPU's mode changes only when it is idle."""
    await _known_host(g, host_id)
    cmd = SetGpuMode(host_id=host_id, gpu_mode=body.gpu_mode, mig_layout=body.mig_layout)
    return await command(g, cmd, f"set GPU mode of {host_id} to {body.gpu_mode}", idempotency_key, host_id)


@ops.post("/v1/hosts/{host_id}/undrain", status_code=202, **OP_ON_TARGET)
async def undrain(host_id: IdPath, _: Operator, g: State, idempotency_key: IdemKey = None) -> JSONResponse:
    await _known_host(g, host_id)
    return await command(g, UndrainHost(host_id=host_id), f"undrain {host_id}", idempotency_key, host_id)


@ops.post("/v1/hosts/{host_id}/decommission", status_code=202, **OP_ON_TARGET)
async def decommission(host_id: IdPath, _: Operator, g: State, idempotency_key: IdemKey = None) -> JSONResponse:
    """Remove a host for good (refused while work runs on it: drain it first)."""
    await _known_host(g, host_id)
    return await command(g, DecommissionHost(host_id=host_id), f"decommission {host_id}", idempotency_key, host_id)


@ops.post("/v1/hosts/{host_id}/faults", status_code=202, **OP_ON_TARGET)
async def report_fault(
    host_id: IdPath, body: FaultIn, _: Operator, g: State, idempotency_key: IdemKey = None
) -> JSONResponse:
    """A GPU failed: take it out of service (work on it is requeued, its time not charged)."""
    await _known_host(g, host_id)
    cmd = ReportGpuFault(host_id=host_id, **body.model_dump())
    return await command(g, cmd, f"fault {host_id}/{body.gpu_index}", idempotency_key, host_id)


@ops.delete("/v1/hosts/{host_id}/faults/{gpu_index}", status_code=202, **OP_ON_TARGET)
async def clear_fault(
    host_id: IdPath,
    gpu_index: Annotated[int, Path(ge=0, le=71)],
    _: Operator,
    g: State,
    idempotency_key: IdemKey = None,
) -> JSONResponse:
    """A faulted GPU was repaired: back in service."""
    await _known_host(g, host_id)
    cmd = ClearGpuFault(host_id=host_id, gpu_index=gpu_index)
    return await command(g, cmd, f"clear {host_id}/{gpu_index}", idempotency_key, host_id)


@ops.get("/v1/capacity", response_model=sc.Capacity)
async def capacity(_: Operator, g: State) -> dict[str, Any]:
    """GPUs total, free, allocated, faulted and draining per SKU and region, and the fleet."""
    return capacity_view(await _hosts(g))


@public.get("/v1/availability", response_model=sc.Availability)
async def availability(g: State) -> dict[str, Any]:
    """GPUs free now per SKU and region, and the most free on one host (public)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for h in await _hosts(g):
        if not h.get("sku") or h["state"] not in ("active", "draining"):
            continue
        blank = {"sku": h["sku"], "region": h["region"], "free_gpus": 0, "max_free_on_one_host": 0}
        r = rows.setdefault((h["sku"], h["region"]), blank)
        free = h["free"] if h["state"] == "active" else 0
        r["free_gpus"] += free
        r["max_free_on_one_host"] = max(r["max_free_on_one_host"], free)
    return {"items": [rows[k] for k in sorted(rows)]}


@public.get("/v1/regions", response_model=sc.Regions)
async def regions(g: State) -> dict[str, Any]:
    """The regions, their zones and the GPU models offered in each (public)."""
    found: dict[str, dict[str, set[str]]] = {}
    for h in await _hosts(g):
        if h.get("sku") and h["state"] != "decommissioned":
            r = found.setdefault(h["region"], {"zones": set(), "skus": set()})
            r["zones"].add(h["zone"])
            r["skus"].add(h["sku"])
    items = [
        {"region": name, "zones": sorted(r["zones"]), "skus": sorted(r["skus"])} for name, r in sorted(found.items())
    ]
    return {"items": items}


def host_view(doc: dict[str, Any]) -> dict[str, Any]:
    gpus = int(doc.get("gpus", 0))
    allocated = {i for held in doc["allocated"].values() for i in held}
    faulted = set(doc["faulted"]) - allocated
    free = max(0, gpus - len(allocated) - len(faulted))
    whole = doc.get("gpu_mode", "whole") != "mig"  # a partitioned GPU is never free to be given whole
    return {
        **{k: doc.get(k) for k in ("host_id", "region", "zone", "rack", "nvlink_domain", "sku", "state")},
        "gpus": gpus,
        "free": free if doc["state"] == "active" and doc.get("reachable", True) and whole else 0,
        "allocated": len(allocated),
        "faulted": sorted(doc["faulted"]),
        "allocations": sorted(doc["allocated"]),
        "drain_reason": doc.get("drain_reason", ""),
        "generation": doc.get("generation", 0),
        "address": doc.get("address"),
        "reachable": doc.get("reachable", True),
        "gpu_mode": doc.get("gpu_mode", "whole"),
        "mig_layout": doc.get("mig_layout") or None,
        "cpu_milli": doc.get("cpu_milli"),
        "memory_mib": doc.get("memory_mib"),
    }


def capacity_view(hosts: list[dict[str, Any]]) -> dict[str, Any]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    fields = ("hosts", "total", "free", "allocated", "faulted", "draining")
    for h in hosts:
        if not h.get("sku") or h["state"] == "decommissioned":
            continue
        blank = {"sku": h["sku"], "region": h["region"], **dict.fromkeys(fields, 0)}
        r = rows.setdefault((h["sku"], h["region"]), blank)
        faulted = len(h["faulted"])
        r["hosts"] += 1
        r["total"] += h["gpus"]
        r["allocated"] += h["allocated"]
        r["faulted"] += faulted
        r["free"] += h["free"]
        if h["state"] == "draining":
            r["draining"] += max(0, h["gpus"] - h["allocated"] - faulted)
    items = []
    for key in sorted(rows):
        r = rows[key]
        tflops = skus()[r["sku"]].bf16_tflops if r["sku"] in skus() else Decimal(0)
        r["utilization"] = round(r["allocated"] / r["total"], 4) if r["total"] else 0.0
        r["bf16_pflops"] = str((Decimal(r["total"] - r["faulted"]) * tflops / 1000).quantize(Decimal("0.001")))
        items.append(r)
    fleet = {f: sum(r[f] for r in items) for f in fields}
    fleet["utilization"] = round(fleet["allocated"] / fleet["total"], 4) if fleet["total"] else 0.0
    return {"items": items, "fleet": fleet}


ROUTERS = [ops, public]
