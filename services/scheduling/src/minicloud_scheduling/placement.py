"""Topology-aware gang placement over an in-memory view of the fleet. Pure: no I/O.

The fleet is a tree: region → zone → rack → NVLink domain → host → GPU. A request
asks for ``nodes`` hosts with ``gpus_per_node`` free GPUs each, of one SKU (or any),
optionally in one region — or for a *share* of one GPU (``gpu_milli`` thousandths of
it, time-sliced, on a host whose GPUs are shared), or for no GPU at all (CPU-only
work). Every request also needs CPU and memory on each of its hosts (``cpu_milli``,
``memory_mib``; unset: the GPUs' proportional part of the host's), and a host never
gives more than it declared. Placement is:

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
between their buckets in place. The GPUs of shared hosts are also kept in buckets by
their free thousandths, per SKU and region, so a share goes to the fullest GPU that
still holds it (best fit) without a scan.

Two policies choose among the hosts that fit (``Fleet.policy``):

- ``bestfit`` (above);
- ``fgd``: fragmentation gradient descent (Weng et al., USENIX ATC '23): of the
  candidates the indexes give (a few from every bucket that fits), the one whose
  placement grows the fleet's fragmentation the least, measured against the recent
  mix of requests (``Mix``): a host's fragmentation for a request shape is the free
  GPU capacity it has that this shape could not use.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from minicloud_shared.skus import skus

LEVELS = ("domain", "rack", "zone", "region", "fleet")
GANG_LEVELS = ("domain", "rack", "zone", "region")  # a gang never spans regions
_LEVEL_AT = {level: i for i, level in enumerate(LEVELS)}
TIE_BREAK_CANDIDATES = 32  # hosts looked at to break best-fit ties by domain occupancy
MILLI = 1000  # a whole GPU, in the thousandths shares are counted in
NO_SLICES: frozenset[tuple[int, int]] = frozenset()
FGD_PER_BUCKET = 4  # fgd: candidates taken from each bucket that fits
FGD_CANDIDATES = 48  # fgd: candidates scored per SKU at most
Policy = Literal["bestfit", "fgd"]


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
    shared: bool = False  # its GPUs may be given as shares (time-sliced), not only whole
    partial: dict[int, int] = field(default_factory=dict)  # shared GPU index -> free thousandths (1-999)
    cpu_milli: int = 0  # CPU it declared, thousandths of a vCPU; 0: not declared (not checked)
    memory_mib: int = 0  # memory it declared, MiB
    cpu_free: int | None = None  # what is not allocated (None: all of it)
    memory_free: int | None = None
    mig: tuple[str, ...] = ()  # MIG hosts: the slices (profiles) every GPU is partitioned into
    # (GPU index, slice index) not allocated. Hosts that are not partitioned share one
    # empty frozenset (a set each would cost 216 bytes a host); only a MIG host, built
    # with its own set, ever changes it.
    mig_free: set[tuple[int, int]] | frozenset[tuple[int, int]] = NO_SLICES
    # Its group key at each level, built once (a host's place in the tree never
    # changes; a moved host is a new view): every index update and tie-break asks.
    keys: tuple[str, ...] = field(init=False, repr=False, compare=False)  # in the order of LEVELS
    # Its groups at each level while it is in a fleet's index: a claim or release moves
    # it between their buckets without looking them up again.
    groups: tuple[_Group, ...] = field(init=False, default=(), repr=False, compare=False)

    # The share buckets it sits in (GPU index -> free thousandths) while indexed.
    shares_at: dict[int, int] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        zone = f"{self.region}/{self.zone}"
        rack = f"{zone}/{self.rack}"
        self.keys = (f"{rack}/{self.domain}", rack, zone, self.region, "*")
        if self.cpu_free is None:
            self.cpu_free = self.cpu_milli
        if self.memory_free is None:
            self.memory_free = self.memory_mib

    def key(self, level: str) -> str:
        return self.keys[_LEVEL_AT[level]]

    @property
    def usable(self) -> int:
        return len(self.free) if self.schedulable else 0

    def needs(self, req: Request) -> tuple[int, int]:
        """The CPU (thousandths) and memory (MiB) ``req`` takes on this host: what it asks,
        or its GPUs' proportional part of the host's."""
        if req.cpu_milli is not None and req.memory_mib is not None:
            return req.cpu_milli, req.memory_mib
        if not self.cpu_milli:
            return req.cpu_milli or 0, req.memory_mib or 0  # not declared: nothing to take a part of
        part = req.gpus_per_node * MILLI + (
            req.gpu_milli or (self._mig_milli(req.mig_profile) if req.mig_profile else 0)
        )
        den = max(1, self.gpu_count) * MILLI
        cpu = req.cpu_milli if req.cpu_milli is not None else self.cpu_milli * part // den
        mem = req.memory_mib if req.memory_mib is not None else self.memory_mib * part // den
        return cpu, mem

    def _mig_milli(self, profile: str) -> int:
        known = skus().get(self.sku)
        mig = known.mig_profile(profile) if known is not None else None
        return mig.billed_milli if mig is not None else 0

    def fits(self, req: Request) -> bool:
        """Whether its CPU and memory hold ``req`` (GPUs aside)."""
        if not self.cpu_milli:
            return req.shape != "cpu"  # undeclared: GPU work only, unchecked
        cpu, mem = self.needs(req)
        return cpu <= (self.cpu_free or 0) and mem <= (self.memory_free or 0)


@dataclass(frozen=True, slots=True)
class Request:
    gpus_per_node: int
    nodes: int = 1
    sku: str | None = None  # None: any SKU (or one of ``skus``)
    region: str | None = None
    skus: tuple[str, ...] | None = None  # with sku None: any one of these
    gpu_milli: int = 0  # with gpus_per_node 0: a share of one GPU, in thousandths (1-999)
    cpu_milli: int | None = None  # per node; None: the GPUs' proportional part of the host's
    memory_mib: int | None = None  # per node; likewise
    mig_profile: str | None = None  # with gpus_per_node 0: a MIG slice of this profile

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def shape(self) -> Literal["whole", "share", "mig", "cpu"]:
        if self.gpus_per_node:
            return "whole"
        return "share" if self.gpu_milli else "mig" if self.mig_profile else "cpu"

    @property
    def wanted(self) -> str:
        """The SKUs it takes, in words."""
        if self.shape == "cpu":
            return "hosts"
        if self.shape == "mig":
            of = self.sku or (" or ".join(self.skus) if self.skus else "")
            return f"{self.mig_profile} MIG slices" + (f" of {of}" if of else "")
        if self.sku:
            return self.sku
        return " or ".join(self.skus) if self.skus else "GPUs of any SKU"


@dataclass(slots=True)  # not frozen: built on every decision, and frozen init costs a call per field
class Placement:
    sku: str
    region: str
    level: str  # the smallest topology level the gang fits in ("host" for a single host)
    slices: tuple[tuple[str, tuple[int, ...]], ...]  # (host id, GPU indices)
    gpu_milli: int = 0  # a share: this many thousandths of the one GPU of its one slice
    resources: tuple[tuple[int, int], ...] = ()  # per slice: (CPU thousandths, memory MiB); () none
    mig_profile: str = ""  # a MIG slice: its profile ...
    mig_instance: int = -1  # ... and its index in its GPU's layout

    @property
    def host_ids(self) -> list[str]:
        return [h for h, _ in self.slices]

    @property
    def gpus(self) -> int:
        """Whole GPUs it holds (a share or a MIG slice holds none whole)."""
        return 0 if self.gpu_milli or self.mig_profile else sum(len(g) for _, g in self.slices)

    @property
    def gpus_touched(self) -> int:
        """GPUs it uses, whole or in part (what a GPU quota counts)."""
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


class _ShareIndex:
    """The GPUs of one pool's shared hosts that can take a share, in buckets by free
    thousandths (whole free GPUs after them, by their host's free GPUs), with the
    non-empty buckets kept sorted: a search skips empty ones without looking."""

    __slots__ = ("buckets", "nonempty")

    def __init__(self) -> None:
        self.buckets: dict[int, dict[tuple[str, int], None]] = {}
        self.nonempty: list[int] = []

    def add(self, key: tuple[str, int], at: int) -> None:
        bucket = self.buckets.get(at)
        if bucket is None:
            bucket = self.buckets[at] = {}
        if not bucket:
            bisect.insort(self.nonempty, at)
        bucket[key] = None

    def remove(self, key: tuple[str, int], at: int) -> None:
        bucket = self.buckets[at]
        if bucket.pop(key, 0) is None and not bucket:
            del self.nonempty[bisect.bisect_left(self.nonempty, at)]

    def from_(self, at: int) -> Iterator[tuple[int, dict[tuple[str, int], None]]]:
        """The non-empty buckets at or above ``at``, in order."""
        nonempty = self.nonempty
        for i in range(bisect.bisect_left(nonempty, at), len(nonempty)):
            level = nonempty[i]
            yield level, self.buckets[level]


class Mix:
    """The recent mix of request shapes (what fragmentation is measured against): the
    last ``window`` requests seen, by shape, as shares of the whole."""

    def __init__(self, window: int = 1000, shapes: Iterable[tuple[Request, float]] = ()) -> None:
        self._recent: deque[Request] = deque(maxlen=window)
        self._fixed = [(r, w) for r, w in shapes if w > 0]
        self._cache: list[tuple[Request, float]] | None = None

    @staticmethod
    def shape_of(req: Request) -> Request:
        return Request(
            req.gpus_per_node,
            1,
            req.sku,
            None,
            req.skus,
            req.gpu_milli,
            req.cpu_milli,
            req.memory_mib,
            req.mig_profile,
        )

    def observe(self, req: Request) -> None:
        self._recent.append(self.shape_of(req))
        self._cache = None

    def types(self, most: int = 16) -> list[tuple[Request, float]]:
        """The ``most`` most frequent shapes with their popularity (summing to 1)."""
        if self._fixed:
            total = sum(w for _, w in self._fixed)
            return [(r, w / total) for r, w in self._fixed]
        if self._cache is None:
            counts = Counter(self._recent).most_common(most)
            total = sum(n for _, n in counts)
            self._cache = [(r, n / total) for r, n in counts]
        return self._cache


class Fleet:
    """The scheduler's view of the fleet's free GPUs, indexed for placement."""

    def __init__(self, policy: Policy = "bestfit", mix: Mix | None = None) -> None:
        self.policy: Policy = policy
        self.mix = mix or Mix()
        self.hosts: dict[str, HostView] = {}
        # (sku, region) -> the GPUs of shared hosts that can take a share, bucketed by
        # free thousandths, for best fit without a scan (a whole free GPU is at 1000 +
        # its host's free GPUs - 1).
        self._shares: dict[tuple[str, str], _ShareIndex] = {}
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
        # sku -> {(CPU thousandths, memory MiB) a host declared: hosts}: the largest
        # host's CPU and memory without a scan (refusals of CPU-only work say it).
        self._cpu_sizes: dict[str, Counter[tuple[int, int]]] = {}
        self._shared_hosts: Counter[tuple[str, str]] = Counter()  # (sku, region) -> hosts whose GPUs are shared
        # (sku, region, MIG profile) -> its free slices (host id, GPU, slice index), and
        # how many hosts are partitioned with such slices (whatever their load).
        self._mig: dict[tuple[str, str, str], dict[tuple[str, int, int], None]] = {}
        self._mig_hosts: Counter[tuple[str, str, str]] = Counter()
        # Every change to a SKU's hosts bumps its generation; a gang search's answer is
        # kept until then (a decision for "any SKU" asks every SKU, and most of them did
        # not change since the last decision).
        self._generation: dict[str, int] = {}
        self._gang_answers: dict[tuple[object, ...], tuple[int, Placement | None]] = {}
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
        if h.shared:
            self._reshare(h, keep=sign > 0)
        if h.mig:
            self._remig(h, keep=sign > 0)

    def _remig(self, h: HostView, keep: bool = True) -> None:
        """Put a MIG host's free slices in the slice index as they are now (``keep``
        False, or not schedulable: take them all out)."""
        for i, profile in enumerate(h.mig):
            index = self._mig.setdefault((h.sku, h.region, profile), {})
            for gpu in range(h.gpu_count):
                if keep and h.schedulable and (gpu, i) in h.mig_free:
                    index[(h.host_id, gpu, i)] = None
                else:
                    index.pop((h.host_id, gpu, i), None)

    def _reshare(self, h: HostView, keep: bool = True) -> None:
        """Put a shared host's GPUs in the share buckets as they are now (``keep`` False:
        take them out)."""
        index = self._shares.get((h.sku, h.region))
        if index is None:
            index = self._shares[(h.sku, h.region)] = _ShareIndex()
        host_id = h.host_id
        for gpu, at in h.shares_at.items():
            index.remove((host_id, gpu), at)
        h.shares_at = {}
        if not keep or not h.schedulable:
            return
        # A whole free GPU sits after every partly taken one, by its host's free GPUs:
        # a share starts a GPU on the fullest host, keeping whole hosts whole.
        at = MILLI + len(h.free) - 1
        for gpu in h.free:
            index.add((host_id, gpu), at)
            h.shares_at[gpu] = at
        for gpu, milli in h.partial.items():
            index.add((host_id, gpu), milli)
            h.shares_at[gpu] = milli

    def _move(self, h: HostView, before: int) -> None:
        """The host's usable GPUs went from ``before`` to what they are now: move it
        between the buckets of its groups (the groups' host counts do not change)."""
        self._generation[h.sku] += 1
        if h.shared:
            self._reshare(h)
        if h.mig:
            self._remig(h)
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
        if host.cpu_milli:
            self._cpu_sizes.setdefault(host.sku, Counter())[(host.cpu_milli, host.memory_mib)] += 1
        if host.shared:
            self._shared_hosts[(host.sku, host.region)] += 1
        for profile in set(host.mig):
            self._mig_hosts[(host.sku, host.region, profile)] += 1

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
        if old.shared:
            self._shared_hosts[(old.sku, old.region)] -= 1
        for profile in set(old.mig):
            self._mig_hosts[(old.sku, old.region, profile)] -= 1
        if old.cpu_milli:
            cpus = self._cpu_sizes[old.sku]
            cpus[(old.cpu_milli, old.memory_mib)] -= 1
            if cpus[(old.cpu_milli, old.memory_mib)] <= 0:
                del cpus[(old.cpu_milli, old.memory_mib)]

    def _update(self, host_id: str, change: Iterable[int], claim: bool) -> None:
        h = self.hosts[host_id]
        before = h.usable
        if claim:
            h.free.difference_update(change)
        else:
            h.free.update(i for i in change if 0 <= i < h.gpu_count)
        self._move(h, before)

    def claim(self, placement: Placement) -> None:
        """Take what ``placement`` holds (it must be free: never an over-commitment)."""
        milli = placement.gpu_milli
        if placement.mig_profile:
            self._claim_slice(placement)
            return
        if not milli and not placement.resources:  # whole GPUs on hosts that hold no CPU: the common case
            hosts = self.hosts
            for host_id, gpus in placement.slices:
                missing = set(gpus) - hosts[host_id].free
                if missing:
                    raise ValueError(f"GPUs {sorted(missing)} of {host_id} are not free")
            for host_id, gpus in placement.slices:
                if gpus:
                    self._update(host_id, gpus, claim=True)
            return
        for i, (host_id, gpus) in enumerate(placement.slices):
            h = self.hosts[host_id]
            if milli:
                (gpu,) = gpus
                if gpu not in h.free and h.partial.get(gpu, 0) < milli:
                    raise ValueError(f"GPU {gpu} of {host_id} has no {milli} thousandths free")
                if not h.shared:
                    raise ValueError(f"the GPUs of {host_id} are not shared")
            else:
                missing = set(gpus) - h.free
                if missing:
                    raise ValueError(f"GPUs {sorted(missing)} of {host_id} are not free")
            if placement.resources and h.cpu_milli:
                cpu, mem = placement.resources[i]
                if cpu > (h.cpu_free or 0) or mem > (h.memory_free or 0):
                    raise ValueError(f"{host_id} has not {cpu} CPU thousandths and {mem} MiB free")
        for i, (host_id, gpus) in enumerate(placement.slices):
            h = self.hosts[host_id]
            if placement.resources and h.cpu_milli:
                cpu, mem = placement.resources[i]
                h.cpu_free = (h.cpu_free or 0) - cpu
                h.memory_free = (h.memory_free or 0) - mem
            if milli:
                before = h.usable
                (gpu,) = gpus
                left = (MILLI if gpu in h.free else h.partial[gpu]) - milli
                h.free.discard(gpu)
                if left:
                    h.partial[gpu] = left
                else:
                    h.partial.pop(gpu, None)
                self._move(h, before)
            elif gpus:
                self._update(host_id, gpus, claim=True)
            else:
                self._generation[h.sku] = self._generation.get(h.sku, 0) + 1  # CPU only: its CPU changed

    def _claim_slice(self, p: Placement) -> None:
        ((host_id, (gpu,)),) = p.slices
        h = self.hosts[host_id]
        i = p.mig_instance
        if (gpu, i) not in h.mig_free or not 0 <= i < len(h.mig) or h.mig[i] != p.mig_profile:
            raise ValueError(f"MIG slice {i} ({p.mig_profile}) of GPU {gpu} of {host_id} is not free")
        if p.resources and h.cpu_milli:
            cpu, mem = p.resources[0]
            if cpu > (h.cpu_free or 0) or mem > (h.memory_free or 0):
                raise ValueError(f"{host_id} has not {cpu} CPU thousandths and {mem} MiB free")
            h.cpu_free = (h.cpu_free or 0) - cpu
            h.memory_free = (h.memory_free or 0) - mem
        assert isinstance(h.mig_free, set)  # a MIG host's own (the check above passed)
        h.mig_free.discard((gpu, i))
        self._move(h, h.usable)

    def unclaim(self, placement: Placement) -> None:
        """Give back what ``placement`` took (its work ended, or a pass takes it back)."""
        for i, (host_id, gpus) in enumerate(placement.slices):
            h = self.hosts.get(host_id)
            if h is None:
                continue
            if placement.resources and h.cpu_milli:
                cpu, mem = placement.resources[i]
                h.cpu_free = min(h.cpu_milli, (h.cpu_free or 0) + cpu)
                h.memory_free = min(h.memory_mib, (h.memory_free or 0) + mem)
            if placement.mig_profile:
                if 0 <= placement.mig_instance < len(h.mig) and isinstance(h.mig_free, set):
                    h.mig_free.add((gpus[0], placement.mig_instance))
                self._move(h, h.usable)
            elif placement.gpu_milli:
                before = h.usable
                (gpu,) = gpus
                if 0 <= gpu < h.gpu_count and gpu not in h.free:
                    left = h.partial.pop(gpu, 0) + placement.gpu_milli
                    if left >= MILLI:
                        h.free.add(gpu)
                    else:
                        h.partial[gpu] = left
                self._move(h, before)
            elif gpus:
                self._update(host_id, gpus, claim=False)
            else:
                self._generation[h.sku] = self._generation.get(h.sku, 0) + 1

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
        # ``_pool`` written out: asked for every SKU of every one-host decision.
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
        if request.gpus_per_node <= 0 or request.nodes < 1:  # (the common case, whole GPUs, skips these)
            if request.nodes < 1 or request.gpus_per_node < 0:
                return NoPlacement("too_large", "a workload needs at least one node")
            if request.nodes != 1:
                return NoPlacement("too_large", "a GPU share or CPU-only workload runs on one node")
            if request.gpu_milli and not 0 < request.gpu_milli < MILLI:
                return NoPlacement("too_large", "a GPU share is 1 to 999 thousandths of one GPU")
            if not request.gpu_milli and not request.mig_profile and not request.cpu_milli:
                return NoPlacement("too_large", "CPU-only work must ask for CPU")
        skus = [request.sku] if request.sku else [k for k in self.skus() if request.skus is None or k in request.skus]
        if request.nodes == 1:
            # Every SKU's answer is one host: the SKU with the most free GPUs in that
            # host's region wins (the first such SKU on a tie), and only its answer is
            # built into a placement.
            if request.gpus_per_node and self.policy != "fgd":  # whole GPUs, best fit: the hot path
                best_rank, best_view = 0, None
                for sku in skus:
                    view = self._single(sku, request)
                    if view is None:
                        continue
                    rank = -self.free_gpus(sku, view.region)
                    if best_view is None or rank < best_rank:
                        best_rank, best_view = rank, view
                if best_view is not None:
                    h, gpus = best_view, tuple(sorted(best_view.free)[: request.gpus_per_node])
                    return Placement(h.sku, h.region, "host", ((h.host_id, gpus),), 0, self._held(h, request))
                return self._refused(request, skus)
            chosen: tuple[HostView, tuple[int, ...]] | None = None
            if self.policy == "fgd":
                chosen = self._least_fragmenting(request, skus)
            else:
                best: tuple[int, HostView, tuple[int, ...]] | None = None
                for sku in skus:
                    one = self._single_part(sku, request)
                    if one is None:
                        continue
                    rank = -self.free_gpus(sku, one[0].region)
                    if best is None or rank < best[0]:
                        best = (rank, *one)
                chosen = None if best is None else (best[1], best[2])
            if chosen is not None:
                h, gpus = chosen
                held = self._held(h, request)
                if request.mig_profile:  # (GPU, slice index)
                    slices = ((h.host_id, gpus[:1]),)
                    return Placement(h.sku, h.region, "host", slices, 0, held, request.mig_profile, gpus[1])
                return Placement(h.sku, h.region, "host", ((h.host_id, gpus),), request.gpu_milli, held)
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

    def _slices(self, sku: str, req: Request) -> Iterator[tuple[HostView, tuple[int, ...]]]:
        """Free MIG slices of ``req``'s profile on hosts of ``sku`` that have its CPU and
        memory: (host, (GPU, slice index)), in the index's order."""
        for (s, region, profile), free in self._mig.items():
            if s != sku or profile != req.mig_profile or (req.region is not None and region != req.region):
                continue
            for host_id, gpu, i in free:
                h = self.hosts[host_id]
                if h.fits(req):
                    yield h, (gpu, i)

    @staticmethod
    def _held(h: HostView, req: Request) -> tuple[tuple[int, int], ...]:
        """What a placement on ``h`` holds of its CPU and memory (a host that declared
        none: nothing)."""
        return (h.needs(req),) if h.cpu_milli else ()

    def _pool(self, sku: str, region: str | None) -> _Group | None:
        """The group of ``sku``'s hosts in ``region``, or in the whole fleet."""
        return self._groups.get(("region", sku, region) if region else ("fleet", sku, "*"))

    def _share_indexes(self, sku: str, region: str | None) -> list[_ShareIndex]:
        if region is not None:
            found = self._shares.get((sku, region))
            return [found] if found is not None else []
        return [i for (s, _), i in self._shares.items() if s == sku]

    def _single(self, sku: str, req: Request) -> HostView | None:
        """Best fit on one host of ``sku`` for whole GPUs: the host (its first free GPUs
        are taken once a SKU wins)."""
        g = req.gpus_per_node
        # ``_pool`` written out: the hot path (a method call here cost 7% of a decision).
        group = self._groups.get(("region", sku, req.region) if req.region else ("fleet", sku, "*"))
        if group is None or len(group.buckets) <= g:
            return None
        chosen = self._best_single(group, g, sku, req)
        return None if chosen is None else self.hosts[chosen]

    def _single_part(self, sku: str, req: Request) -> tuple[HostView, tuple[int, ...]] | None:
        """Best fit on one host of ``sku`` for a share (the host and its GPU), a MIG slice
        (the host and (GPU, slice index)) or CPU-only work (the host, no GPU)."""
        if req.mig_profile:
            return next(self._slices(sku, req), None)
        if req.gpu_milli:
            best: tuple[int, HostView, int] | None = None
            for index in self._share_indexes(sku, req.region):
                for at, bucket in index.from_(req.gpu_milli):  # the fullest GPU that holds it
                    if best is not None and at >= best[0]:
                        break
                    fit = next((k for k in bucket if self.hosts[k[0]].fits(req)), None)
                    if fit is not None:
                        best = (at, self.hosts[fit[0]], fit[1])
                        break
            return None if best is None else (best[1], (best[2],))
        group = self._pool(sku, req.region)
        if group is None:
            return None
        for hosts in group.buckets:  # the host with the fewest free GPUs: GPUs stay usable
            for candidate in hosts:
                view = self.hosts[candidate]
                if view.schedulable and view.fits(req):
                    return view, ()
        return None

    # --- fragmentation (policy "fgd") -------------------------------------------------

    def _candidates(self, sku: str, req: Request) -> Iterator[tuple[HostView, tuple[int, ...]]]:
        """Hosts (and GPUs) of ``sku`` that can take ``req``: a few from every bucket that
        fits, best fit first."""
        taken = 0
        if req.mig_profile:
            for n, found in enumerate(self._slices(sku, req)):
                if n >= FGD_CANDIDATES:
                    return
                yield found
            return
        if req.shape == "share":
            for index in self._share_indexes(sku, req.region):
                for _, gpus in index.from_(req.gpu_milli):
                    n = 0
                    for host_id, gpu in gpus:
                        h = self.hosts[host_id]
                        if h.fits(req):
                            yield h, (gpu,)
                            n, taken = n + 1, taken + 1
                            if n >= FGD_PER_BUCKET or taken >= FGD_CANDIDATES:
                                break
                    if taken >= FGD_CANDIDATES:
                        return
            return
        g = req.gpus_per_node
        group = self._pool(sku, req.region)
        if group is None or len(group.buckets) <= g:
            return
        for bucket in group.buckets[g:]:
            n = 0
            for candidate in bucket:
                h = self.hosts[candidate]
                if h.schedulable and h.fits(req):
                    yield h, tuple(sorted(h.free)[:g])
                    n, taken = n + 1, taken + 1
                    if n >= FGD_PER_BUCKET or taken >= FGD_CANDIDATES:
                        break
            if taken >= FGD_CANDIDATES:
                return

    def _least_fragmenting(self, req: Request, skus: list[str]) -> tuple[HostView, tuple[int, ...]] | None:
        """Of the candidates, the one whose placement grows fragmentation the least
        (ties: the best fit, which comes first)."""
        types = self.mix.types()
        best: tuple[float, HostView, tuple[int, ...]] | None = None
        for sku in skus:
            for h, gpus in self._candidates(sku, req):
                whole, partial = len(h.free), list(h.partial.values())
                before = fragmentation(h, types, whole, partial, h.cpu_free or 0, h.memory_free or 0)
                cpu, mem = h.needs(req)
                if req.mig_profile:
                    pass  # a slice takes no whole or shared GPU capacity: only CPU and memory change
                elif req.shape == "share":
                    (gpu,) = gpus
                    if gpu in h.free:
                        whole -= 1
                        partial.append(MILLI - req.gpu_milli)
                    else:
                        partial.remove(h.partial[gpu])
                        partial.append(h.partial[gpu] - req.gpu_milli)
                else:
                    whole -= req.gpus_per_node
                cpu_left = (h.cpu_free or 0) - cpu if h.cpu_milli else 0
                mem_left = (h.memory_free or 0) - mem if h.cpu_milli else 0
                delta = fragmentation(h, types, whole, partial, cpu_left, mem_left) - before
                if best is None or delta < best[0] - 1e-9:
                    best = (delta, h, gpus)
        return None if best is None else (best[1], best[2])

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

    def _find_sku(self, sku: str, req: Request) -> Placement | None:
        generation = self._generation.get(sku, 0)
        key = (sku, req.gpus_per_node, req.nodes, req.region, req.cpu_milli, req.memory_mib)
        known = self._gang_answers.get(key)
        if known is not None and known[0] == generation:
            return known[1]
        found = self._find_gang(sku, req)
        if len(self._gang_answers) >= 4096:
            self._gang_answers.clear()
        self._gang_answers[key] = (generation, found)
        return found

    def _find_gang(self, sku: str, req: Request) -> Placement | None:
        g, n = req.gpus_per_node, req.nodes
        need = g * n
        prefix = req.region + "/" if req.region else ""
        for level in GANG_LEVELS:
            if max(self._sizes.get((level, sku), {0: 0}), default=0) < n:
                continue  # no group at this level has n hosts
            best: tuple[int, int, str] | None = None
            # One pass, no list (a level may have thousands of groups): the same test as
            # ``_fitting_groups``, written out because this is the hot loop (as a min()
            # over that generator, 64-GPU gangs ran 30% slower: 5,700 against 7,900/s).
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
            if best is None:
                continue
            # The group with the fewest fitting hosts (then the fewest free GPUs), if
            # its hosts also have the CPU and memory asked: almost always. Only when they
            # do not are the other groups sorted and tried, best first.
            found = self._gang_in(level, sku, best[2], req)
            if found is not None:
                return found
            for _, _, key in sorted(r for r in self._fitting_groups(level, sku, req) if r != best):
                found = self._gang_in(level, sku, key, req)
                if found is not None:
                    return found
        return None

    def _fitting_groups(self, level: str, sku: str, req: Request) -> Iterator[tuple[int, int, str]]:
        """The groups of ``level`` with ``req.nodes`` hosts of ``req.gpus_per_node`` free
        GPUs: (fitting hosts, free GPUs, group key)."""
        g, n = req.gpus_per_node, req.nodes
        need = g * n
        prefix = req.region + "/" if req.region else ""
        for key, group in self._members.get((level, sku), ()):
            if group.hosts < n or group.free < need or len(group.buckets) <= g:
                continue
            if prefix and not (key == req.region or key.startswith(prefix)):
                continue
            buckets = group.buckets
            fitting = len(buckets[g]) if len(buckets) == g + 1 else group.at_least(g)  # whole hosts: one bucket
            if fitting >= n:
                yield fitting, group.free, key

    def _gang_in(self, level: str, sku: str, key: str, req: Request) -> Placement | None:
        """The gang on the fullest fitting hosts of one group that have its CPU and memory."""
        g, n = req.gpus_per_node, req.nodes
        hosts = []
        checks = bool(self._cpu_sizes.get(sku))  # some host of the SKU declared its CPU and memory
        for host_id in self._groups[(level, sku, key)].smallest_fitting(g):
            if not checks or self.hosts[host_id].fits(req):
                hosts.append(host_id)
                if len(hosts) == n:
                    break
        if len(hosts) < n:
            return None
        views = [self.hosts[h] for h in hosts]
        slices = tuple((v.host_id, tuple(sorted(v.free)[:g])) for v in views)
        held = tuple(v.needs(req) for v in views) if any(v.cpu_milli for v in views) else ()
        return Placement(sku, views[0].region, level, slices, 0, held)

    def _best_single(self, group: _Group, g: int, sku: str, req: Request) -> str | None:
        # Where no NVLink domain of the SKU has two hosts (PCIe fleets, one host per
        # domain) there is nothing to break ties by: the first best-fitting host.
        shared_domains = max(self._sizes.get(("domain", sku)) or {0: 0}) > 1
        hosts = self.hosts
        checks = bool(self._cpu_sizes.get(sku))  # some host of the SKU declared its CPU and memory
        for bucket in group.buckets[g:]:
            if not bucket:
                continue
            if not shared_domains and not checks:
                return next(iter(bucket))
            # Best fit found; break ties towards the most occupied NVLink domain, so
            # emptier domains stay whole for gangs. Hosts without the CPU or memory the
            # request needs are passed over.
            best_host, best_free, looked = None, None, 0
            for host_id in bucket:
                h = hosts[host_id]
                if h.cpu_milli and not h.fits(req):  # a host that declared no CPU takes GPU work unchecked
                    continue
                if not shared_domains:
                    return host_id
                domain_free = self._groups[("domain", sku, h.key("domain"))].free
                if best_free is None or domain_free < best_free:
                    best_host, best_free = host_id, domain_free
                looked += 1
                if looked >= TIE_BREAK_CANDIDATES:
                    break
            if best_host is not None:
                return best_host
        return None

    def _why_not(self, req: Request, skus: list[str]) -> NoPlacement:
        what = req.wanted
        where = f" in {req.region}" if req.region else ""
        per_sku = {
            sku: sum(n for (s, r), n in self.total_gpus.items() if s == sku and r == (req.region or r)) for sku in skus
        }
        total = sum(per_sku.values())
        declared = [size for s in skus for size in self._cpu_sizes.get(s, {})]
        asked = _resources_in_words(req)
        if req.shape == "cpu":
            if not declared:
                return NoPlacement("no_such_capacity", f"no host{where} declares its CPU and memory")
            if not any((req.cpu_milli or 0) <= c and (req.memory_mib or 0) <= m for c, m in declared):
                return NoPlacement("too_large", f"no host{where} has {asked}")
            return NoPlacement("capacity", f"waiting for capacity: no host{where} has {asked} free")
        if total == 0:
            return NoPlacement("no_such_capacity", f"there are no {what}{where}")
        cpu, mem = req.cpu_milli, req.memory_mib
        if declared and cpu is not None and mem is not None and not any(cpu <= c and mem <= m for c, m in declared):
            return NoPlacement("too_large", f"no host of {what}{where} has {asked}")
        if req.shape == "mig":
            hosts = sum(
                n
                for (s, r, p), n in self._mig_hosts.items()
                if s in skus and p == req.mig_profile and req.region in (None, r)
            )
            if not hosts:
                return NoPlacement("no_such_capacity", f"no GPU{where} is partitioned into {what}")
            return NoPlacement(
                "capacity",
                f"waiting for capacity: all {what}{where} are taken"
                + (f" (or on hosts without {asked} free)" if asked else ""),
            )
        if req.shape == "share":
            if not any(n > 0 and s in skus and req.region in (None, r) for (s, r), n in self._shared_hosts.items()):
                return NoPlacement("no_such_capacity", f"no {what} GPU{where} is shared (time-sliced)")
            return NoPlacement(
                "capacity",
                f"waiting for capacity: no shared {what} GPU{where} has {req.gpu_milli} thousandths free"
                + (f" on a host with {asked} free" if asked else ""),
            )
        largest_host = max((max(self._host_sizes.get(s) or {0: 0}) for s in skus), default=0)
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
        if declared and any(
            (pool := self._pool(s, req.region)) is not None and pool.at_least(req.gpus_per_node) >= req.nodes
            for s in skus
        ):
            return NoPlacement(
                "capacity",
                f"waiting for capacity: {req.nodes} host(s) with {req.gpus_per_node} free {what} are free{where}, "
                "but not with the CPU and memory it needs" + (f" ({asked})" if asked else ""),
            )
        return NoPlacement(
            "topology",
            f"{free} {what} are free{where}, but not {req.nodes} host(s) with {req.gpus_per_node} free GPUs each "
            "in one region's zone: waiting for a compact set of hosts to free up",
        )


def _resources_in_words(req: Request) -> str:
    parts = []
    if req.cpu_milli is not None:
        parts.append(f"{req.cpu_milli / MILLI:g} vCPU")
    if req.memory_mib is not None:
        parts.append(f"{req.memory_mib / 1024:g} GiB of memory")
    return " and ".join(parts)


def fragmentation(
    h: HostView, types: list[tuple[Request, float]], whole: int, partial: list[int], cpu_free: int, memory_free: int
) -> float:
    """A host's fragmentation against a mix of request shapes (FGD's F_n(M), in
    thousandths of a GPU): for each shape, weighted by its popularity, the free GPU
    capacity of the host that shape could not use — all of it where the host cannot
    take the shape at all (or it needs no GPU), else the free parts of GPUs too small
    for it. ``whole``, ``partial``, ``cpu_free`` and ``memory_free`` describe the host
    as it would be (its other properties are ``h``'s)."""
    total = whole * MILLI + sum(partial)
    if total == 0:
        return 0.0
    frag = 0.0
    for m, p in types:
        shape = m.shape
        if (
            shape in ("cpu", "mig")
            or (m.sku is not None and m.sku != h.sku)
            or (m.skus is not None and h.sku not in m.skus)
        ):
            frag += p * total
            continue
        if h.cpu_milli:
            cpu, mem = h.needs(m)
            if cpu > cpu_free or mem > memory_free:
                frag += p * total
                continue
        if shape == "share":
            if not h.shared or (whole == 0 and max(partial, default=0) < m.gpu_milli):
                frag += p * total
            else:
                frag += p * sum(v for v in partial if v < m.gpu_milli)
        elif whole < m.gpus_per_node:
            frag += p * total
        else:
            frag += p * sum(partial)
    return frag
