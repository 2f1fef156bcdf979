"""The queue policy, pure: given the waiting work and the fleet, what happens now.

``plan`` makes one placement pass over the head of the queue and returns decisions —
place this workload here, it waits (code and reason), stop these spot workloads for
it — without I/O. The handlers load what it needs (``Pass``), call it, check the hosts
it chose against their records, and stage the decisions (``actions.py``). Placements
are tried on the fleet view itself (``Fleet.claim``) and taken back before ``plan``
returns, so later decisions in a pass see the GPUs earlier ones took.

Rules (docs/scheduling.md):
- order and heads come from ``fairness`` (fair share within a band; a waiting head
  holds back only work that competes for its GPUs);
- behind a head, smaller work may backfill: at most ``BACKFILL_LIMIT`` per head per
  pass, and only while the head has waited less than ``BACKFILL_WINDOW_S``;
- a workload is placed only within its tenant's budget, quota and, for reserved work,
  its reservations in force;
- on-demand or reserved work that waits for capacity or topology may have spot work
  stopped for it (one such decision per pass), when stopping spot work would make room.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from minicloud_scheduling.fairness import can_head, competes, fair_order
from minicloud_scheduling.placement import Fleet, NoPlacement, Placement, Request
from minicloud_scheduling.state import Quota, Workload

BACKFILL_LIMIT = 8  # smaller workloads placed past a blocked head per pass
BACKFILL_WINDOW_S = 600  # once the head has waited this long, nothing jumps it


@dataclass(frozen=True, slots=True)
class Place:
    workload: Workload
    placement: Placement


@dataclass(frozen=True, slots=True)
class Wait:
    workload: Workload
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop these running spot workloads (after notice) to make room for ``workload``,
    which waits meanwhile (code ``preempting``)."""

    workload: Workload
    victims: list[str]


Decision = Place | Wait | Preempt
SpotHeld = Mapping[str, list[tuple[str, list[int]]]]  # spot workload id -> its GPUs


@dataclass
class Pass:
    """What one pass decides from: the waiting work (queued, with its queue scores), its
    tenants' quotas and budget blocks, the GPUs running spot work holds, and the time."""

    now: datetime
    waiting: list[Workload]
    scores: Mapping[str, float]
    quotas: dict[str, Quota]
    budget_blocks: Mapping[str, str] = field(default_factory=dict)  # tenant -> why it is stopped
    spot: SpotHeld | None = None  # None: not read yet (``needs_spot`` says when it matters)
    preempt: bool = True  # False: decide placements only (no heads, no preemption)


def beyond_reservation(wl: Workload, quota: Quota, now: datetime) -> NoPlacement | None:
    """Reserved work runs within its tenant's reservations in force (their GPUs, their
    term) or waits: the reserved price and queue rank apply to nothing else."""
    if wl.sku is None or wl.region is None:
        return NoPlacement("reservation", "reserved work must name the SKU and region of its reservation")
    reserved, in_use = quota.reserved_room(wl.sku, wl.region, now)
    if in_use + wl.gpus <= reserved:
        return None
    where = f"{wl.sku} in {wl.region}"
    if not reserved:
        why = f"no reservation of {where} is in force for this tenant"
    else:
        why = f"its reservations of {where} hold {in_use} of {reserved} GPUs; this needs {wl.gpus}"
    return NoPlacement("reservation", f"waiting for reserved capacity: {why}")


def place_one(
    fleet: Fleet, wl: Workload, quota: Quota, budget_block: str | None, now: datetime
) -> Placement | NoPlacement:
    """Where ``wl`` goes now, or why it waits: capacity first, then budget, then quota."""
    if wl.price_class == "reserved":
        beyond = beyond_reservation(wl, quota, now)
        if beyond is not None:
            return beyond
    found = fleet.find(Request(wl.gpus_per_node, wl.nodes, wl.sku, wl.region))
    if isinstance(found, NoPlacement):
        return found
    if budget_block is not None:
        return NoPlacement("budget", f"the tenant's budget is exhausted: {budget_block}")
    blocked = quota.blocking(found.sku, found.region, found.gpus)
    if blocked is not None:
        key, held, limit = blocked
        sku, region = key.split("|")
        return NoPlacement(
            "quota",
            f"over quota: the tenant holds {held} of its {limit} GPUs "
            f"({'any SKU' if sku == '*' else sku} in {'any region' if region == '*' else region}) "
            f"and this needs {found.gpus} more",
        )
    return found


@contextmanager
def _tentative(fleet: Fleet) -> Iterator[list[Placement]]:
    """Placements claimed on ``fleet`` inside the block are taken back at its end."""
    claimed: list[Placement] = []
    try:
        yield claimed
    finally:
        for p in reversed(claimed):
            for host_id, gpus in p.slices:
                fleet.release(host_id, gpus)


def preemption_victims(fleet: Fleet, wl: Workload, spot: SpotHeld) -> list[str]:
    """The spot workloads whose GPUs ``wl`` would get if they were free (empty if
    stopping spot work would not make room)."""
    widened: dict[str, set[int]] = {}
    for slices in spot.values():
        for host_id, indices in slices:
            view = fleet.hosts.get(host_id)
            if view is not None:
                widened.setdefault(host_id, set()).update(set(indices) - view.free)
    for host_id, extra in widened.items():
        fleet.release(host_id, extra)
    try:
        found = fleet.find(Request(wl.gpus_per_node, wl.nodes, wl.sku, wl.region))
    finally:
        for host_id, extra in widened.items():
            fleet.claim(Placement("", "", "", ((host_id, tuple(extra)),)))
    if isinstance(found, NoPlacement):
        return []
    wanted = {(h, g) for h, gpus in found.slices for g in gpus}
    return sorted(w for w, slices in spot.items() if any((h, g) in wanted for h, gs in slices for g in gs))


def plan(fleet: Fleet, p: Pass) -> list[Decision]:
    """One placement pass: a decision for each waiting workload that has news."""
    held = {tenant: sum(quota.used.values()) for tenant, quota in p.quotas.items()}
    quotas = dict(p.quotas)
    decisions: list[Decision] = []
    heads: list[Workload] = []
    backfilled: dict[str, int] = {}
    preempting = not p.preempt  # one preemption decision per pass
    with _tentative(fleet) as claimed:
        for wl in fair_order(p.waiting, p.scores, held):
            competing = [h for h in heads if competes(h, wl)]
            head = min(competing, key=lambda h: p.scores[h.workload_id]) if competing else None
            if head is not None:
                waited = (p.now - head.submitted_at).total_seconds()
                if (
                    backfilled.get(head.workload_id, 0) >= BACKFILL_LIMIT
                    or waited > BACKFILL_WINDOW_S
                    or wl.gpus >= head.gpus
                ):
                    # Another tenant's workload is never named to this one.
                    ahead = head.workload_id if head.tenant_id == wl.tenant_id else "another tenant's workload"
                    decisions.append(Wait(wl, "priority", f"waiting behind {ahead}, queued before it"))
                    continue
            quota = quotas.get(wl.tenant_id, Quota())
            found = place_one(fleet, wl, quota, p.budget_blocks.get(wl.tenant_id), p.now)
            if isinstance(found, Placement):
                fleet.claim(found)
                claimed.append(found)
                quotas[wl.tenant_id] = quota.add(
                    found.sku, found.region, found.gpus, reserved=wl.price_class == "reserved"
                )
                decisions.append(Place(wl, found))
                if head is not None:
                    backfilled[head.workload_id] = backfilled.get(head.workload_id, 0) + 1
                continue
            code = found.code
            if code in ("capacity", "topology") and wl.price_class != "spot" and not preempting:
                victims = preemption_victims(fleet, wl, p.spot or {})
                if victims:
                    preempting = True
                    code = "preempting"
                    decisions.append(Preempt(wl, victims))
            if code != "preempting":
                decisions.append(Wait(wl, found.code, found.reason))
            if p.preempt and can_head(code) and not any(h.sku == wl.sku and h.region == wl.region for h in heads):
                # Waiting for capacity or topology makes it the head of its pool, which
                # others must not overtake for long; what waits for its tenant's quota or
                # budget, or for GPUs the fleet does not have, holds up nobody.
                heads.append(wl)
    return decisions


def needs_spot(p: Pass, decisions: list[Decision]) -> bool:
    """Whether ``decisions`` were made without knowing the running spot work and could
    change with it: some on-demand or reserved work waits for capacity or topology."""
    return (
        p.preempt
        and p.spot is None
        and any(
            isinstance(d, Wait) and d.code in ("capacity", "topology") and d.workload.price_class != "spot"
            for d in decisions
        )
    )


BUDGET_STOPPED = ("spot", "dev")  # what a tenant out of credit loses at once (price class or kind)


def budget_stops(
    running: list[Workload], cause: str, reached_at: datetime | None, now: datetime
) -> list[tuple[Workload, datetime]]:
    """What a tenant's budget stop ends, and when each ends: at its hard budget, all its
    running work, at the instant the charges reached it (what ran after that is the
    cloud's); out of credit, its spot and dev work, now."""
    everything = cause == "hard_budget"
    reached = reached_at if everything else None
    out = []
    for wl in running:
        if wl.status != "running" or not (everything or wl.price_class in BUDGET_STOPPED or wl.kind in BUDGET_STOPPED):
            continue
        at = now if reached is None or wl.started_at is None else max(wl.started_at, min(reached, now))
        out.append((wl, at))
    return out
