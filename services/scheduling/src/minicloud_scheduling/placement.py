"""Topology-aware gang placement over an in-memory view of the fleet. Pure: no I/O.

The fleet is a tree: region → zone → rack → NVLink domain → host → GPU. A request
asks for ``nodes`` hosts with ``gpus_per_node`` free GPUs each, of one SKU (or any),
optionally in one region. Placement is:

- **all or nothing**: a gang gets all its hosts or none (the caller commits the
  claim in one optimistic-concurrency step over the hosts' versions);
- **compact**: the whole gang in one NVLink domain when it fits there, else one
  rack, else one zone, else one region — never across regions;
- **best fit, not first fit**: among the groups of the first level that can hold the
  gang, the one with the fewest suitable hosts (then the fewest free GPUs); within
  it, the hosts with the fewest free GPUs that still fit. Single-host requests go to
  the host with the fewest free GPUs that fit, preferring hosts in the most occupied
  NVLink domain. Whole hosts and whole NVLink domains stay free for big gangs.

Every group of every level keeps its hosts in buckets by free-GPU count, so finding
"n hosts with at least g free GPUs in one group" costs a few dictionary lookups per
group, not a scan of hosts. A host holds its groups: a claim or release moves it
between their buckets in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

LEVELS = ("domain", "rack", "zone", "region", "fleet")
GANG_LEVELS = ("domain", "rack", "zone", "region")  # a gang never spans regions
_LEVEL_AT = {level: i for i, level in enumerate(LEVELS)}
TIE_BREAK_CANDIDATES = 32  # hosts looked at to break best-fit ties by domain occupancy


@dataclass(slots=True)
class HostView:
    """What placement knows of a host."""

    host_id: str
    sku: str
    region: str
    zone: str
    rack: str
    domain: str
    gpu_count: int
    free: set[int]  # GPU indices neither allocated nor faulted
    schedulable: bool = True  # False while draining
    version: int = 0  # the version of the record this view reflects
    # Its group key at each level, built once (a host's place in the tree never
    # changes; a moved host is a new view): every index update and tie-break asks.
    keys: tuple[str, ...] = field(init=False, repr=False, compare=False)  # in the order of LEVELS
    # Its groups at each level while it is in a fleet's index: a claim or release moves
    # it between their buckets without looking them up again.
    groups: tuple[_Group, ...] = field(init=False, default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        zone = f"{self.region}/{self.zone}"
        rack = f"{zone}/{self.rack}"
        self.keys = (f"{rack}/{self.domain}", rack, zone, self.region, "*")

    def key(self, level: str) -> str:
        return self.keys[_LEVEL_AT[level]]

    @property
    def usable(self) -> int:
        return len(self.free) if self.schedulable else 0


@dataclass(frozen=True, slots=True)
class Request:
    gpus_per_node: int
    nodes: int = 1
    sku: str | None = None  # None: any SKU (or one of ``skus``)
    region: str | None = None
    skus: tuple[str, ...] | None = None  # with sku None: any one of these

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def wanted(self) -> str:
        """The SKUs it takes, in words."""
        if self.sku:
            return self.sku
        return " or ".join(self.skus) if self.skus else "GPUs of any SKU"


@dataclass(frozen=True, slots=True)
class Placement:
    sku: str
    region: str
    level: str  # the smallest topology level the gang fits in ("host" for a single host)
    slices: tuple[tuple[str, tuple[int, ...]], ...]  # (host id, GPU indices)

    @property
    def host_ids(self) -> list[str]:
        return [h for h, _ in self.slices]

    @property
    def gpus(self) -> int:
        return sum(len(g) for _, g in self.slices)


@dataclass(frozen=True, slots=True)
class NoPlacement:
    """Why a request cannot be placed now, in words a tenant understands."""

    code: str  # no_such_capacity | capacity | topology | too_large
    reason: str


@dataclass(slots=True)
class _Group:
    """The schedulable hosts of one SKU in one topology group, bucketed by free GPUs."""

    buckets: list[dict[str, None]] = field(default_factory=list)  # [f] -> host ids with exactly f usable GPUs
    free: int = 0  # usable GPUs in the group
    hosts: int = 0

    def ensure(self, size: int) -> None:
        while len(self.buckets) <= size:
            self.buckets.append({})

    def at_least(self, g: int) -> int:
        return sum(len(b) for b in self.buckets[g:])

    def smallest_fitting(self, g: int) -> Iterator[str]:
        for bucket in self.buckets[g:]:
            yield from bucket


class Fleet:
    """The scheduler's view of the fleet's free GPUs, indexed for placement."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostView] = {}
        # (level, sku, group key) -> group
        self._groups: dict[tuple[str, str, str], _Group] = {}
        # (level, sku) -> the group keys at that level with their groups (what a gang
        # search scans)
        self._members: dict[tuple[str, str], list[tuple[str, _Group]]] = {}
        self.total_gpus: dict[tuple[str, str], int] = {}  # (sku, region) -> GPUs in service
        # (level, sku) -> {group size in hosts: number of groups of that size}: lets a
        # gang skip a level none of whose groups has enough hosts (one-host domains).
        self._sizes: dict[tuple[str, str], dict[int, int]] = {}
        # sku -> {GPUs per host: hosts of that size}: the largest host of a SKU without a
        # scan of the fleet (a refusal explains itself with it).
        self._host_sizes: dict[str, dict[int, int]] = {}
        # Every change to a SKU's hosts bumps its generation; a gang search's answer is
        # kept until then (a decision for "any SKU" asks every SKU, and most of them did
        # not change since the last decision).
        self._generation: dict[str, int] = {}
        self._gang_answers: dict[tuple[str, int, int, str | None], tuple[int, Placement | None]] = {}
        # A refusal's explanation, kept while none of the SKUs it looked at changed: a
        # queue pass asks again for every blocked workload, and most of the time the
        # fleet did not change in between.
        self._refusals: dict[tuple[Request, tuple[int, ...]], NoPlacement] = {}
        self._sku_list: list[str] | None = None  # skus(), until a SKU is added

    # --- keeping the view -------------------------------------------------------------

    def _index(self, h: HostView, sign: int) -> None:
        """Add a host to (+1) or take it out of (-1) its groups at every level."""
        usable = h.usable
        self._generation[h.sku] = self._generation.get(h.sku, 0) + 1
        groups = []
        for level, key in zip(LEVELS, h.keys, strict=True):
            gkey = (level, h.sku, key)
            group = self._groups.get(gkey)
            if group is None:
                group = self._groups[gkey] = _Group()
                self._members.setdefault((level, h.sku), []).append((key, group))
                self._sku_list = None
            groups.append(group)
            group.ensure(h.gpu_count)
            if sign > 0:
                group.buckets[usable][h.host_id] = None
            else:
                group.buckets[usable].pop(h.host_id, None)
            group.free += sign * usable
            sizes = self._sizes.setdefault((level, h.sku), {})
            if group.hosts:
                sizes[group.hosts] -= 1
                if not sizes[group.hosts]:
                    del sizes[group.hosts]
            group.hosts += sign
            if group.hosts:
                sizes[group.hosts] = sizes.get(group.hosts, 0) + 1
        h.groups = tuple(groups) if sign > 0 else ()

    def _move(self, h: HostView, before: int) -> None:
        """The host's usable GPUs went from ``before`` to what they are now: move it
        between the buckets of its groups (the groups' host counts do not change)."""
        self._generation[h.sku] += 1
        after = h.usable
        if after == before:
            return
        host_id = h.host_id
        for group in h.groups:
            del group.buckets[before][host_id]
            group.buckets[after][host_id] = None
            group.free += after - before

    def upsert(self, host: HostView) -> None:
        """Add a host, or replace what is known of it."""
        old = self.hosts.get(host.host_id)
        if old is not None:
            self._forget(old)
        self.hosts[host.host_id] = host
        self._index(host, +1)
        self.total_gpus[(host.sku, host.region)] = self.total_gpus.get((host.sku, host.region), 0) + host.gpu_count
        sizes = self._host_sizes.setdefault(host.sku, {})
        sizes[host.gpu_count] = sizes.get(host.gpu_count, 0) + 1

    def remove(self, host_id: str) -> None:
        old = self.hosts.pop(host_id, None)
        if old is not None:
            self._forget(old)

    def _forget(self, old: HostView) -> None:
        self._index(old, -1)
        self.total_gpus[(old.sku, old.region)] -= old.gpu_count
        sizes = self._host_sizes[old.sku]
        sizes[old.gpu_count] -= 1
        if not sizes[old.gpu_count]:
            del sizes[old.gpu_count]

    def _update(self, host_id: str, change: Iterable[int], claim: bool) -> None:
        h = self.hosts[host_id]
        before = h.usable
        if claim:
            h.free.difference_update(change)
        else:
            h.free.update(i for i in change if 0 <= i < h.gpu_count)
        self._move(h, before)

    def claim(self, placement: Placement) -> None:
        for host_id, gpus in placement.slices:
            h = self.hosts[host_id]
            missing = set(gpus) - h.free
            if missing:
                raise ValueError(f"GPUs {sorted(missing)} of {host_id} are not free")
        for host_id, gpus in placement.slices:
            self._update(host_id, gpus, claim=True)

    def take(self, host_id: str, gpus: Iterable[int]) -> None:
        """Claim these GPUs of one host outside any placement (they must be free): what a
        pass sets aside while it tries something, ``release`` gives back."""
        self.claim(Placement("", "", "", ((host_id, tuple(gpus)),)))

    def release(self, host_id: str, gpus: Iterable[int]) -> None:
        if host_id in self.hosts:
            self._update(host_id, gpus, claim=False)

    def set_schedulable(self, host_id: str, schedulable: bool) -> None:
        h = self.hosts.get(host_id)
        if h is not None and h.schedulable != schedulable:
            before = h.usable
            h.schedulable = schedulable
            self._move(h, before)

    # --- questions ------------------------------------------------------------------

    def skus(self) -> list[str]:
        if self._sku_list is None:
            self._sku_list = sorted({sku for (level, sku) in self._members if level == "fleet"})
        return list(self._sku_list)

    def free_gpus(self, sku: str, region: str | None = None) -> int:
        group = self._groups.get(("region", sku, region) if region else ("fleet", sku, "*"))
        return group.free if group else 0

    def largest_gangs(self, sku: str, region: str) -> dict[int, int]:
        """For each GPUs-per-node g: the most nodes a gang of g-GPU nodes could get now in
        ``region`` (hosts with at least g free GPUs; a gang may span the region's zones)."""
        group = self._groups.get(("region", sku, region))
        if group is None:
            return {}
        return {g: n for g in range(1, len(group.buckets)) if (n := group.at_least(g))}

    # --- placement ------------------------------------------------------------------

    def find(self, request: Request) -> Placement | NoPlacement:
        """The best placement for ``request`` now, or why there is none. Claims nothing."""
        if request.gpus_per_node < 1 or request.nodes < 1:
            return NoPlacement("too_large", "a workload needs at least one GPU on at least one node")
        skus = [request.sku] if request.sku else [k for k in self.skus() if request.skus is None or k in request.skus]
        if request.nodes == 1:
            # Every SKU's answer is one host: the SKU with the most free GPUs in that
            # host's region wins (the first such SKU on a tie), and only its answer is
            # built into a placement.
            best: tuple[int, str, HostView] | None = None
            for sku in skus:
                host = self._single(sku, request)
                if host is None:
                    continue
                rank = -self.free_gpus(sku, host.region)
                if best is None or rank < best[0]:
                    best = (rank, sku, host)
            if best is not None:
                _, sku, h = best
                return Placement(sku, h.region, "host", ((h.host_id, tuple(sorted(h.free)[: request.gpus_per_node])),))
            return self._refused(request, skus)
        candidates: list[Placement] = []
        for sku in skus:
            found = self._find_sku(sku, request)
            if found is not None:
                candidates.append(found)
        if candidates:
            order = {lvl: i for i, lvl in enumerate(("host", *LEVELS))}
            return min(candidates, key=lambda p: (order[p.level], -self.free_gpus(p.sku, p.region)))
        return self._refused(request, skus)

    def _refused(self, req: Request, skus: list[str]) -> NoPlacement:
        """Why ``req`` cannot be placed, as ``_why_not`` says, kept until one of ``skus``
        changes (every change bumps its SKU's generation)."""
        key = (req, tuple(self._generation.get(s, 0) for s in skus))
        known = self._refusals.get(key)
        if known is None:
            if len(self._refusals) >= 4096:
                self._refusals.clear()
            known = self._refusals[key] = self._why_not(req, skus)
        return known

    def _single(self, sku: str, req: Request) -> HostView | None:
        """The best host of ``sku`` for a one-host request, if any."""
        g = req.gpus_per_node
        group = self._groups.get(("region", sku, req.region) if req.region else ("fleet", sku, "*"))
        if group is None or len(group.buckets) <= g:
            return None
        host_id = self._best_single(group, g, sku)
        return None if host_id is None else self.hosts[host_id]

    def _find_sku(self, sku: str, req: Request) -> Placement | None:
        g, n = req.gpus_per_node, req.nodes
        generation = self._generation.get(sku, 0)
        known = self._gang_answers.get((sku, g, n, req.region))
        if known is not None and known[0] == generation:
            return known[1]
        found = self._find_gang(sku, req)
        self._gang_answers[(sku, g, n, req.region)] = (generation, found)
        return found

    def _find_gang(self, sku: str, req: Request) -> Placement | None:
        g, n = req.gpus_per_node, req.nodes
        for level in GANG_LEVELS:
            if max(self._sizes.get((level, sku), {0: 0}), default=0) < n:
                continue  # no group at this level has n hosts
            best: tuple[int, int, str] | None = None
            need = g * n
            prefix = req.region + "/" if req.region else ""
            for key, group in self._members.get((level, sku), ()):
                if group.hosts < n or group.free < need or len(group.buckets) <= g:
                    continue
                if prefix and not (key == req.region or key.startswith(prefix)):
                    continue
                buckets = group.buckets
                fitting = len(buckets[g]) if len(buckets) == g + 1 else group.at_least(g)  # whole hosts: one bucket
                if fitting >= n and (
                    best is None or fitting < best[0] or (fitting == best[0] and group.free < best[1])
                ):
                    best = (fitting, group.free, key)
            if best is not None:
                group = self._groups[(level, sku, best[2])]
                hosts = []
                for host_id in group.smallest_fitting(g):
                    hosts.append(host_id)
                    if len(hosts) == n:
                        break
                slices = tuple((h, tuple(sorted(self.hosts[h].free)[:g])) for h in hosts)
                return Placement(sku, self.hosts[hosts[0]].region, level, slices)
        return None

    def _best_single(self, group: _Group, g: int, sku: str) -> str | None:
        # Where no NVLink domain of the SKU has two hosts (PCIe fleets, one host per
        # domain) there is nothing to break ties by: the first best-fitting host.
        shared_domains = max(self._sizes.get(("domain", sku)) or {0: 0}) > 1
        for bucket in group.buckets[g:]:
            if not bucket:
                continue
            if not shared_domains:
                return next(iter(bucket))
            # Best fit found; break ties towards the most occupied NVLink domain, so
            # emptier domains stay whole for gangs.
            best_host, best_free = None, None
            for i, host_id in enumerate(bucket):
                if i >= TIE_BREAK_CANDIDATES:
                    break
                domain_free = self._groups[("domain", sku, self.hosts[host_id].key("domain"))].free
                if best_free is None or domain_free < best_free:
                    best_host, best_free = host_id, domain_free
            return best_host
        return None

    def _why_not(self, req: Request, skus: list[str]) -> NoPlacement:
        what = req.wanted
        where = f" in {req.region}" if req.region else ""
        per_sku = {
            sku: sum(n for (s, r), n in self.total_gpus.items() if s == sku and r == (req.region or r)) for sku in skus
        }
        total = sum(per_sku.values())
        largest_host = max((max(self._host_sizes.get(s) or {0: 0}) for s in skus), default=0)
        if total == 0:
            return NoPlacement("no_such_capacity", f"there are no {what}{where}")
        if req.gpus_per_node > largest_host:
            return NoPlacement(
                "too_large", f"no host has {req.gpus_per_node} {what}{where}: the largest has {largest_host}"
            )
        if req.gpus > max(per_sku.values(), default=0):  # a gang's nodes all have one SKU
            most = max(per_sku.values(), default=0)
            return NoPlacement("too_large", f"the workload needs {req.gpus} {what}, the fleet{where} has {most}")
        free = sum(self.free_gpus(s, req.region) for s in skus)
        if free < req.gpus:
            return NoPlacement(
                "capacity", f"waiting for capacity: {free} of the {req.gpus} {what} it needs are free{where}"
            )
        return NoPlacement(
            "topology",
            f"{free} {what} are free{where}, but not {req.nodes} host(s) with {req.gpus_per_node} free GPUs each "
            "in one region's zone: waiting for a compact set of hosts to free up",
        )
