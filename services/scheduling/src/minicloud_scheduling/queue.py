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
- backfill by reservation, as Slurm does with time limits: a head gets a
  *reservation* — the earliest time enough GPUs will be free for it, from running
  work's maximum durations, and the GPUs it would take then (``reserve``). Work behind
  it runs now if it fits on GPUs the reservation does not need, or ends (by its own
  maximum duration) before the reservation starts; otherwise it waits. ``easy``
  reserves for the head of each pool (EASY backfilling); ``conservative`` for every
  blocked workload in the pass, in order, so that no backfill delays any of them;
- a workload is placed only within its tenant's budget, quota and, for reserved work,
  its reservations in force;
- on-demand or reserved work that waits for capacity or topology may have spot work
  stopped for it (one such decision per pass), when stopping spot work would make room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from minicloud_scheduling.fairness import can_head, competes, fair_order
from minicloud_scheduling.placement import Fleet, NoPlacement, Placement
from minicloud_scheduling.state import Quota, Workload

Backfill = Literal["easy", "conservative"]
BACKFILL: Backfill = "easy"  # the default, chosen by measurement (docs/scheduling.md)
MAX_HOLDS = 16  # conservative: blocked workloads given a reservation in one pass


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
SpotHeld = Mapping[str, list[tuple[str, list[int], int, int]]]  # spot workload id -> per host: GPUs, CPU, memory
Slices = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class Release:
    """GPUs (and CPU and memory) running work holds, free by ``at`` at the latest (its
    maximum duration's end: scheduling stops it then)."""

    at: datetime
    slices: Slices
    resources: tuple[tuple[int, int], ...] = ()  # per slice: (CPU thousandths, memory MiB)


@dataclass(frozen=True, slots=True)
class Hold:
    """A blocked workload's reservation: enough GPUs are free for it by ``at`` at the
    latest, these ones; ``at`` None: not even once all running work has ended (a pool
    shrunk by drains or faults), so nothing it could wait for is delayed by backfill."""

    workload: Workload
    at: datetime | None
    gpus: frozenset[tuple[str, int]]

    def binds(self, ends: datetime) -> bool:
        """Whether work ending at ``ends`` must keep off this reservation's GPUs."""
        return self.at is not None and ends > self.at


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
    # When running work's GPUs are free at the latest; None: not read yet
    # (``needs_releases`` says when it matters).
    releases: Sequence[Release] | None = None
    backfill: Backfill = BACKFILL
    holds: list[Hold] = field(default_factory=list)  # out: the reservations the last plan made


def beyond_reservation(wl: Workload, quota: Quota, now: datetime) -> NoPlacement | None:
    """Reserved work runs within its tenant's reservations in force (their GPUs, their
    term) or waits: the reserved price and queue rank apply to nothing else."""
    if wl.sku is None or wl.region is None:
        return NoPlacement("reservation", "reserved work must name the SKU and region of its reservation")
    reserved, in_use = quota.reserved_room(wl.sku, wl.region, now)
    if in_use + wl.gpus_held <= reserved:
        return None
    where = f"{wl.sku} in {wl.region}"
    if not reserved:
        why = f"no reservation of {where} is in force for this tenant"
    else:
        why = f"its reservations of {where} hold {in_use} of {reserved} GPUs; this needs {wl.gpus_held}"
    return NoPlacement("reservation", f"waiting for reserved capacity: {why}")


def place_one(
    fleet: Fleet, wl: Workload, quota: Quota, budget_block: str | None, now: datetime
) -> Placement | NoPlacement:
    """Where ``wl`` goes now, or why it waits: capacity first, then budget, then quota."""
    if wl.price_class == "reserved":
        beyond = beyond_reservation(wl, quota, now)
        if beyond is not None:
            return beyond
    found = fleet.find(wl.request())
    if isinstance(found, NoPlacement):
        return found
    if budget_block is not None:
        return NoPlacement("budget", f"the tenant's budget is exhausted: {budget_block}")
    blocked = quota.blocking(found.sku, found.region, found.gpus_touched)
    if blocked is not None:
        key, held, limit = blocked
        sku, region = key.split("|")
        return NoPlacement(
            "quota",
            f"over quota: the tenant holds {held} of its {limit} GPUs "
            f"({'any SKU' if sku == '*' else sku} in {'any region' if region == '*' else region}) "
            f"and this needs {found.gpus_touched} more",
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
            fleet.unclaim(p)


def preemption_victims(fleet: Fleet, wl: Workload, spot: SpotHeld) -> list[str]:
    """The spot workloads whose GPUs ``wl`` would get if they were free (empty if
    stopping spot work would not make room)."""
    with _freed(fleet) as free:
        for slices in spot.values():
            for host_id, indices, cpu, mem in slices:
                free(host_id, indices, (cpu, mem))
        found = fleet.find(wl.request())
    if isinstance(found, NoPlacement):
        return []
    wanted = {(h, g) for h, gpus in found.slices for g in gpus}
    hosts = set(found.host_ids)
    # Its GPUs, or (CPU-only work) the CPU of its hosts.
    return sorted(
        w
        for w, slices in spot.items()
        if any((h, g) in wanted for h, gs, _, _ in slices for g in gs)
        or (not wanted and any(h in hosts and cpu for h, _, cpu, _ in slices))
    )


@contextmanager
def _freed(fleet: Fleet) -> Iterator[Callable[[str, Iterable[int], tuple[int, int]], None]]:
    """Inside the block, ``free(host_id, gpus, (cpu, memory))`` frees those of the GPUs
    that are taken, and that CPU and memory (as if their work had ended); they are taken
    again at its end."""
    freed: list[Placement] = []

    def free(host_id: str, gpus: Iterable[int], resources: tuple[int, int] = (0, 0)) -> None:
        view = fleet.hosts.get(host_id)
        if view is None:
            return
        extra = tuple(sorted(set(gpus) - view.free - set(view.partial)))
        cpu = min(resources[0], view.cpu_milli - (view.cpu_free or 0)) if view.cpu_milli else 0
        mem = min(resources[1], view.memory_mib - (view.memory_free or 0)) if view.cpu_milli else 0
        if extra or cpu or mem:
            p = Placement(view.sku, view.region, "host", ((host_id, extra),), 0, ((cpu, mem),))
            fleet.unclaim(p)
            freed.append(p)

    try:
        yield free
    finally:
        for p in reversed(freed):
            fleet.claim(p)


def _in_pool(fleet: Fleet, host_id: str, wl: Workload) -> bool:
    view = fleet.hosts.get(host_id)
    return (
        view is not None
        and (wl.accepts is None or view.sku in wl.accepts)
        and (wl.region is None or view.region == wl.region)
    )


@contextmanager
def _fenced(fleet: Fleet, gpus: Iterable[tuple[str, int]]) -> Iterator[None]:
    """Inside the block, the free ones of ``gpus`` (reserved for work ahead) are out of
    reach: claimed on the view, and given back at its end."""
    fence: dict[str, set[int]] = {}
    for host_id, gpu in gpus:
        view = fleet.hosts.get(host_id)
        if view is not None and gpu in view.free:
            fence.setdefault(host_id, set()).add(gpu)
    for host_id, taken in fence.items():
        fleet.take(host_id, taken)
    try:
        yield
    finally:
        for host_id, kept in fence.items():
            fleet.release(host_id, kept)


def reserve(
    fleet: Fleet, wl: Workload, releases: Sequence[Release], fenced: frozenset[tuple[str, int]] = frozenset()
) -> tuple[datetime, Placement] | None:
    """When ``wl`` could start at the latest and where, if nothing new took GPUs: the
    running work of its pool ends in order of its maximum durations (``releases``), on a
    copy of the moment, until ``wl`` fits; ``fenced`` GPUs (other reservations) are
    never given to it. None: it would not fit even with all of them free."""
    request = wl.request()
    mine = sorted((r for r in releases if any(_in_pool(fleet, h, wl) for h, _ in r.slices)), key=lambda r: r.at)
    with _fenced(fleet, fenced), _freed(fleet) as free:
        i = 0
        while i < len(mine):
            at = mine[i].at
            while i < len(mine) and mine[i].at == at:  # everything that ends at that instant
                held = mine[i].resources
                for n, (host_id, gpus) in enumerate(mine[i].slices):
                    free(host_id, [g for g in gpus if (host_id, g) not in fenced], held[n] if held else (0, 0))
                i += 1
            found = fleet.find(request)
            if isinstance(found, Placement):
                return at, found
        return None


def _hold(fleet: Fleet, wl: Workload, releases: Sequence[Release], holds: Sequence[Hold]) -> Hold:
    fenced = frozenset(g for h in holds for g in h.gpus)
    found = reserve(fleet, wl, releases, fenced)
    if found is None:
        return Hold(wl, None, frozenset())
    at, placement = found
    return Hold(wl, at, frozenset((h, g) for h, gpus in placement.slices for g in gpus))


def _behind(wl: Workload, hold: Hold) -> str:
    # Another tenant's workload is never named to this one.
    ahead = hold.workload.workload_id if hold.workload.tenant_id == wl.tenant_id else "another tenant's workload"
    due = f", due to start by {hold.at.isoformat()}" if hold.at is not None else ""
    return f"waiting behind {ahead}, queued before it: running now would delay its start{due}"


def plan(fleet: Fleet, p: Pass) -> list[Decision]:
    """One placement pass: a decision for each waiting workload that has news."""
    held = {tenant: sum(quota.used.values()) for tenant, quota in p.quotas.items()}
    quotas = dict(p.quotas)
    decisions: list[Decision] = []
    heads: list[Workload] = []
    holds: list[Hold] = []  # reservations, in queue order
    p.holds = holds
    releases: list[Release] = list(p.releases or ())
    preempting = not p.preempt  # one preemption decision per pass
    with _tentative(fleet) as claimed:
        for wl in fair_order(p.waiting, p.scores, held):
            ends = p.now + timedelta(seconds=wl.max_duration_s)
            binding = [h for h in holds if competes(h.workload, wl) and h.binds(ends)]
            quota = quotas.get(wl.tenant_id, Quota())
            block = p.budget_blocks.get(wl.tenant_id)
            found = place_one(fleet, wl, quota, block, p.now)
            if isinstance(found, Placement) and binding:
                # It fits now, but it would still run when work ahead is due to start:
                # only on GPUs no such reservation needs.
                fence = {g for h in binding for g in h.gpus}
                wanted = {(h, g) for h, gpus in found.slices for g in gpus}
                with _fenced(fleet, fence):
                    found = place_one(fleet, wl, quota, block, p.now)
                if isinstance(found, NoPlacement) and found.code in ("capacity", "topology"):
                    # Name the reservation whose GPUs it would have taken.
                    ahead = next((h for h in binding if h.gpus & wanted), binding[0])
                    decisions.append(Wait(wl, "priority", _behind(wl, ahead)))
                    continue
            if isinstance(found, Placement):
                fleet.claim(found)
                claimed.append(found)
                whole = found.slices if found.gpus else tuple((h, ()) for h, _ in found.slices)
                releases.append(Release(ends, whole, found.resources))
                quotas[wl.tenant_id] = quota.add(
                    found.sku, found.region, found.gpus_touched, reserved=wl.price_class == "reserved"
                )
                decisions.append(Place(wl, found))
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
            if not (p.preempt and can_head(code)):
                # What waits for its tenant's quota or budget, or for GPUs the fleet does
                # not have, holds up nobody.
                continue
            first = not any(h.accepts == wl.accepts and h.region == wl.region for h in heads)
            if first:
                heads.append(wl)
            if (first or p.backfill == "conservative") and len(holds) < MAX_HOLDS:
                # Waiting for capacity or topology: it gets a reservation that work
                # behind it must not delay (EASY: the first of its pool only).
                holds.append(_hold(fleet, wl, releases, holds))
    return decisions


def needs_releases(p: Pass, decisions: list[Decision]) -> bool:
    """Whether ``decisions`` were made without knowing when running work ends and could
    change with it: something waits for capacity or topology, so it holds a reservation
    that work placed after it may not delay."""
    return (
        p.preempt
        and p.releases is None
        and any(isinstance(d, (Wait, Preempt)) and can_head(_code(d)) for d in decisions)
        and any(isinstance(d, Place) for d in decisions)
    )


def _code(d: Decision) -> str:
    return "preempting" if isinstance(d, Preempt) else d.code if isinstance(d, Wait) else ""


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
