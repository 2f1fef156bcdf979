"""What the demo datacenter is and what happens in it: the fleet, the tenants, the
workload mix from the five layers of model work, and the events a real cloud sees
(a mid-month price cut, GPU faults, drains). Everything is drawn up front from one
seed, as a timeline of actions in simulated time, so a run can be repeated."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

HOUR = 3600
DAY = 24 * HOUR


@dataclass(frozen=True)
class Host:
    host_id: str
    region: str
    zone: str
    rack: str
    nvlink_domain: str
    sku: str
    gpus: int

    def body(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "region": self.region,
            "zone": self.zone,
            "rack": self.rack,
            "nvlink_domain": self.nvlink_domain,
            "sku": self.sku,
            "gpu_count": self.gpus,
        }


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    name: str
    credit: str  # prepaid credit, USD
    credit_limit: str
    soft_budget: str | None
    hard_budget: str | None


@dataclass
class Job:
    at: float  # seconds after the start
    tenant: str
    name: str
    kind: str
    sku: str
    gpus_per_node: int
    nodes: int
    price_class: str
    duration_s: int
    region: str | None = None  # reserved work names its reservation's region


@dataclass(frozen=True)
class Reservation:
    """Reserved capacity the operator grants a tenant for the month."""

    tenant: str
    sku: str
    region: str
    gpus: int


@dataclass
class Event:
    at: float
    kind: str  # fault, repair, drain, undrain
    host_id: str
    gpu_index: int = 0
    detail: str = ""


@dataclass
class Scenario:
    start: datetime
    days: int
    hosts: list[Host]
    tenants: list[Tenant]
    jobs: list[Job]
    events: list[Event]
    price_cut_at: datetime
    price_cuts: dict[tuple[str, str], int] = field(default_factory=dict)  # (sku, class) -> percent off
    reservations: list[Reservation] = field(default_factory=list)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


def fleet(scale: float = 1.0) -> list[Host]:
    """Two regions: racks of 8-GPU HGX hosts (H100, H200, A100; each host one NVLink
    domain) beside racks of single-GPU L40S inference nodes."""
    hosts: list[Host] = []
    layout = {
        "eu-1": [("h100-80gb-sxm", 16, 8), ("h200-141gb-sxm", 8, 8), ("l40s-48gb-pcie", 16, 1)],
        "us-1": [("h100-80gb-sxm", 8, 8), ("a100-80gb-sxm", 8, 8), ("l40s-48gb-pcie", 16, 1)],
    }
    for region, groups in layout.items():
        rack_no = 0
        for sku, count, gpus in groups:
            n = max(1, round(count * scale))
            per_rack = 4 if gpus == 8 else 16
            for i in range(n):
                if i % per_rack == 0:
                    rack_no += 1
                zone = f"{region}{'ab'[rack_no % 2]}"
                rack = f"{region}-r{rack_no:02d}"
                host_id = f"{region}-{sku.split('-')[0]}-{i + 1:02d}"
                hosts.append(Host(host_id, region, zone, rack, f"{host_id}-nvl", sku, gpus))
    return hosts


TENANTS = [
    Tenant("aurora-labs", "Aurora Labs (frontier pre-training)", "250000", "50000", None, None),
    Tenant("bitforge", "Bitforge (fine-tuning shop)", "40000", "10000", "30000", None),
    Tenant("cortex-ai", "Cortex AI (inference)", "30000", "10000", None, None),
    Tenant("deepwell", "Deepwell Research (spot training)", "20000", "5000", None, None),
    Tenant("studio-9", "Studio 9 (notebooks)", "5000", "1000", None, None),
    Tenant("shoestring", "Shoestring (a startup on a budget)", "3000", "0", "1500", "2500"),
]

# Reserved capacity (at full scale): the pre-training lab reserves H100 and H200 gangs,
# the inference shop L40S nodes. Reserved work runs within its reservation; a reserved
# job larger than the tenant's reservation is submitted on demand instead.
RESERVATIONS = [
    Reservation("aurora-labs", "h100-80gb-sxm", "eu-1", 64),
    Reservation("aurora-labs", "h200-141gb-sxm", "eu-1", 48),
    Reservation("cortex-ai", "l40s-48gb-pcie", "eu-1", 6),
]

# The mix: per kind, submissions a day, who submits, and how they are shaped.
# (tenant weights, sku choices, gpus per node, nodes, classes with weights, hours min..max)
MIX: dict[str, dict[str, Any]] = {
    "pre_training": {
        "per_day": 0.7,
        "tenants": {"aurora-labs": 1},
        "skus": {"h100-80gb-sxm": 3, "h200-141gb-sxm": 2},
        "gpus": [8],
        "nodes": [2, 4, 4, 6, 8],
        "classes": {"reserved": 2, "on_demand": 1},
        "hours": (24, 96),
    },
    "fine_tuning": {
        "per_day": 5,
        "tenants": {"bitforge": 4, "aurora-labs": 1, "shoestring": 1},
        "skus": {"h100-80gb-sxm": 3, "a100-80gb-sxm": 2, "h200-141gb-sxm": 1},
        "gpus": [8],
        "nodes": [1, 1, 2],
        "classes": {"on_demand": 3, "spot": 1},
        "hours": (4, 30),
    },
    "training": {
        "per_day": 10,
        "tenants": {"deepwell": 4, "shoestring": 2, "bitforge": 1},
        "skus": {"a100-80gb-sxm": 3, "h100-80gb-sxm": 2},
        "gpus": [1, 2, 4, 8],
        "nodes": [1],
        "classes": {"spot": 3, "on_demand": 1},
        "hours": (2, 24),
    },
    "inference": {
        "per_day": 2,
        "tenants": {"cortex-ai": 4, "bitforge": 1},
        "skus": {"l40s-48gb-pcie": 4, "h100-80gb-sxm": 1},
        "gpus": [1],
        "nodes": [1],
        "classes": {"on_demand": 2, "reserved": 1},
        "hours": (48, 480),
    },
    "dev": {
        "per_day": 12,
        "tenants": {"studio-9": 3, "shoestring": 1, "deepwell": 1},
        "skus": {"l40s-48gb-pcie": 2, "a100-80gb-sxm": 2, "h100-80gb-sxm": 1},
        "gpus": [1],
        "nodes": [1],
        "classes": {"on_demand": 1},
        "hours": (1, 8),
    },
}

# The mid-month price cut, percent off per (SKU, class): 20 % on average, 55 % at most.
PRICE_CUTS = {
    ("h100-80gb-sxm", "on_demand"): 20,
    ("h100-80gb-sxm", "spot"): 15,
    ("h200-141gb-sxm", "on_demand"): 10,
    ("h200-141gb-sxm", "spot"): 10,
    ("a100-80gb-sxm", "on_demand"): 25,
    ("a100-80gb-sxm", "spot"): 55,
    ("l40s-48gb-pcie", "on_demand"): 5,
    ("l40s-48gb-pcie", "spot"): 20,
}


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _arrivals(rng: random.Random, rate: float, until: float) -> Iterator[float]:
    """Instants of a Poisson process of ``rate`` per second, from 0 until ``until``
    (the caller's draws between two arrivals come from the same generator, in order)."""
    t = rng.expovariate(rate)
    while t < until:
        yield t
        t += rng.expovariate(rate)


def build(start: datetime, days: int = 31, seed: int = 7, scale: float = 1.0, load: float = 1.0) -> Scenario:
    """The scenario: ``scale`` sizes the fleet, ``load`` the arrival rates."""
    rng = random.Random(seed)
    hosts = fleet(scale)
    horizon = days * DAY
    jobs: list[Job] = []
    for kind, mix in MIX.items():
        lo, hi = mix["hours"]
        rate = mix["per_day"] * load * scale / DAY
        for n, t in enumerate(_arrivals(rng, rate, horizon - 6 * HOUR), 1):
            jobs.append(
                Job(
                    at=t,
                    tenant=_pick(rng, mix["tenants"]),
                    name=f"{kind.replace('_', '-')}-{n:04d}",
                    kind=kind,
                    sku=_pick(rng, mix["skus"]),
                    gpus_per_node=rng.choice(mix["gpus"]),
                    nodes=rng.choice(mix["nodes"]),
                    price_class=_pick(rng, mix["classes"]),
                    duration_s=int(rng.uniform(lo, hi) * HOUR),
                )
            )
    reservations = [_scaled(r, scale) for r in RESERVATIONS]
    for j in jobs:
        if j.price_class == "reserved":
            held = next((r for r in reservations if (r.tenant, r.sku) == (j.tenant, j.sku)), None)
            if held is None or j.gpus_per_node * j.nodes > held.gpus:
                j.price_class = "on_demand"
            else:
                j.region = held.region
    jobs.sort(key=lambda j: j.at)
    events: list[Event] = []
    eight = [h for h in hosts if h.gpus == 8]
    # GPU faults (about two a day, an Xid and a repair 6-48 h later) and maintenance drains.
    for t in _arrivals(rng, 2 / DAY, horizon - DAY):
        h = rng.choice(hosts)
        gpu = rng.randrange(h.gpus)
        code = rng.choice(["xid-79", "xid-48", "xid-94", "xid-63"])
        events.append(Event(t, "fault", h.host_id, gpu, code))
        events.append(Event(t + rng.uniform(6, 48) * HOUR, "repair", h.host_id, gpu))
    for t in _arrivals(rng, 0.4 / DAY, horizon - DAY):
        h = rng.choice(eight)
        events.append(Event(t, "drain", h.host_id, detail="firmware upgrade"))
        events.append(Event(t + rng.uniform(4, 24) * HOUR, "undrain", h.host_id))
    events.sort(key=lambda e: e.at)
    return Scenario(
        start=start,
        days=days,
        hosts=hosts,
        tenants=list(TENANTS),
        jobs=jobs,
        events=events,
        price_cut_at=start + timedelta(days=days / 2),
        price_cuts=dict(PRICE_CUTS),
        reservations=reservations,
    )


def _scaled(r: Reservation, scale: float) -> Reservation:
    """A reservation for a fleet ``scale`` times the full one (whole 8-GPU hosts for HGX SKUs)."""
    unit = 1 if r.sku.startswith("l40s") else 8
    gpus = max(unit, round(r.gpus * scale / unit) * unit)
    return Reservation(r.tenant, r.sku, r.region, gpus)
