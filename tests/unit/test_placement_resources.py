"""Placement on resource vectors: GPU shares, CPU and memory, CPU-only work, and the
fragmentation-aware policy. Never an over-commitment, whatever the order of events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicloud_scheduling.placement import MILLI, Fleet, HostView, Mix, NoPlacement, Placement, Policy, Request

GIB = 1024


LAYOUT = ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb")


def host(
    host_id: str,
    gpus: int = 8,
    *,
    shared: bool = False,
    cpu: int = 64,
    mem_gib: int = 512,
    sku: str = "h100",
    used: int = 0,
    mig: tuple[str, ...] = (),
) -> HostView:
    return HostView(
        host_id,
        sku,
        "eu",
        "a",
        "r1",
        host_id,
        gpus,
        set() if mig else set(range(used, gpus)),
        shared=shared,
        cpu_milli=cpu * MILLI,
        memory_mib=mem_gib * GIB,
        mig=mig,
        mig_free={(g, i) for g in range(gpus) for i in range(len(mig))},
    )


def fleet(*hosts: HostView, policy: Policy = "bestfit", mix: Mix | None = None) -> Fleet:
    f = Fleet(policy, mix)
    for h in hosts:
        f.upsert(h)
    return f


def placed(result: Placement | NoPlacement) -> Placement:
    assert isinstance(result, Placement), result
    return result


def refused(result: Placement | NoPlacement) -> NoPlacement:
    assert isinstance(result, NoPlacement), result
    return result


def share(milli: int, cpu: int | None = None, mem_gib: int | None = None) -> Request:
    return Request(
        0, gpu_milli=milli, cpu_milli=None if cpu is None else cpu * MILLI, memory_mib=mem_gib and mem_gib * GIB
    )


def test_a_share_goes_to_the_fullest_shared_gpu_that_holds_it() -> None:
    f = fleet(host("s", 2, shared=True))
    first = placed(f.find(share(600)))
    f.claim(first)
    assert first.slices == (("s", (0,)),)
    assert first.gpu_milli == 600
    assert first.gpus == 0
    second = placed(f.find(share(300)))  # 400 left on GPU 0: the best fit
    assert second.slices == (("s", (0,)),)
    f.claim(second)
    third = placed(f.find(share(200)))  # 100 left on GPU 0 cannot hold it: GPU 1
    assert third.slices == (("s", (1,)),)
    f.claim(third)
    assert f.hosts["s"].partial == {0: 100, 1: 800}
    assert f.hosts["s"].free == set()
    # A whole GPU is not given where a share runs.
    assert refused(f.find(Request(1, sku="h100"))).code == "capacity"
    f.unclaim(second)
    f.unclaim(first)
    assert f.hosts["s"].free == {0}
    assert f.hosts["s"].partial == {1: 800}
    assert placed(f.find(Request(1))).slices == (("s", (0,)),)


def test_shares_only_on_shared_hosts_and_whole_gpus_anywhere() -> None:
    f = fleet(host("whole", 8))
    no = refused(f.find(share(250)))
    assert no.code == "no_such_capacity"
    assert "shared" in no.reason
    f = fleet(host("whole", 8, used=7), host("shared", 8, shared=True))
    assert placed(f.find(Request(1))).host_ids == ["whole"]  # best fit, as before
    assert placed(f.find(share(250))).host_ids == ["shared"]


def test_cpu_and_memory_are_never_overcommitted() -> None:
    f = fleet(host("small", 8, cpu=16, mem_gib=64), host("big", 8, cpu=128, mem_gib=1024, used=4))
    # The default is the GPUs' part of the host: 1 of 8 GPUs takes 2 of small's 16 vCPU.
    p = placed(f.find(Request(1)))
    assert p.host_ids == ["big"]
    assert p.resources == ((16 * MILLI, 128 * GIB),)
    # 32 vCPU with one GPU: small has 16 in all, so it goes to big.
    asked = Request(1, cpu_milli=32 * MILLI, memory_mib=16 * GIB)
    p = placed(f.find(asked))
    assert p.host_ids == ["big"]
    f.claim(p)
    f.claim(placed(f.find(asked)))
    f.claim(placed(f.find(asked)))
    f.claim(placed(f.find(asked)))  # big: 4 x 32 vCPU = all 128
    assert f.hosts["big"].cpu_free == 0
    no = refused(f.find(Request(1, cpu_milli=32 * MILLI, memory_mib=16 * GIB)))
    assert no.code == "too_large" or no.code == "capacity"
    assert "32 vCPU" in no.reason
    # Claiming past the CPU left fails loudly.
    with pytest.raises(ValueError, match="big"):
        f.claim(Placement("h100", "eu", "host", (("big", (4,)),), 0, ((MILLI, 0),)))


def test_cpu_only_work_goes_where_gpus_are_busy_and_needs_declared_hosts() -> None:
    f = fleet(host("idle", 8), host("busy", 8, used=8))
    p = placed(f.find(Request(0, cpu_milli=8 * MILLI, memory_mib=32 * GIB)))
    assert p.host_ids == ["busy"]
    assert p.slices == (("busy", ()),)
    assert p.gpus == 0
    assert refused(f.find(Request(0, cpu_milli=200 * MILLI, memory_mib=GIB))).code == "too_large"
    legacy = Fleet()
    legacy.upsert(HostView("old", "h100", "eu", "a", "r1", "d", 8, set(range(8))))  # no CPU declared
    assert refused(legacy.find(Request(0, cpu_milli=MILLI, memory_mib=GIB))).code == "no_such_capacity"
    assert placed(legacy.find(Request(1))).host_ids == ["old"]  # GPU work there as before
    assert refused(f.find(Request(0, gpu_milli=0))).code == "too_large"  # neither GPU nor CPU asked


def test_gangs_skip_hosts_without_the_cpu_they_ask() -> None:
    f = fleet(host("a", 8, cpu=8), host("b", 8, cpu=64), host("c", 8, cpu=64))
    p = placed(f.find(Request(8, nodes=2, cpu_milli=32 * MILLI, memory_mib=GIB)))
    assert sorted(p.host_ids) == ["b", "c"]
    assert p.resources == ((32 * MILLI, GIB), (32 * MILLI, GIB))
    no = refused(f.find(Request(8, nodes=3, cpu_milli=32 * MILLI, memory_mib=GIB)))
    assert no.code == "capacity"
    assert "CPU and memory" in no.reason


def test_fgd_keeps_gpus_whole_enough_for_the_mix() -> None:
    """Best fit puts a 500 share on the GPU with 600 free (leaving 100 nobody in the mix
    can use); FGD, knowing the mix is 500 shares, starts a fresh GPU (leaving 500)."""
    mix = Mix(shapes=[(share(500, 1, 1), 1.0)])
    for policy, expected in (("bestfit", (0,)), ("fgd", (1,))):
        f = fleet(host("s", 2, shared=True), policy=policy, mix=mix)
        f.claim(placed(Fleet.find(f, share(400, 1, 1))))  # GPU 0: 600 left
        assert f.hosts["s"].partial == {0: 600}
        assert placed(f.find(share(500, 1, 1))).slices == (("s", expected),), policy


def test_fgd_puts_cpu_only_work_where_it_strands_no_gpu() -> None:
    """CPU-only work that would take the last CPU of a host with free GPUs strands them;
    FGD sends it to the host whose GPUs are all taken."""
    mix = Mix(
        shapes=[
            (Request(1, cpu_milli=8 * MILLI, memory_mib=GIB), 0.9),
            (Request(0, cpu_milli=8 * MILLI, memory_mib=GIB), 0.1),
        ]
    )
    f = fleet(host("free-gpus", 8, cpu=16, used=4), host("full", 8, cpu=16, used=8), policy="fgd", mix=mix)
    f.hosts["free-gpus"].cpu_free = 8 * MILLI
    p = placed(f.find(Request(0, cpu_milli=8 * MILLI, memory_mib=GIB)))
    assert p.host_ids == ["full"]


def test_mig_slices_go_to_partitioned_gpus_of_their_profile_only() -> None:
    f = fleet(host("m", 2, mig=LAYOUT, cpu=16), host("w", 8))
    slice_ = Request(0, mig_profile="1g.10gb", cpu_milli=2 * MILLI, memory_mib=GIB)
    taken = []
    for _ in range(4):  # two 1g.10gb slices on each of the two GPUs
        p = placed(f.find(slice_))
        assert p.host_ids == ["m"]
        assert p.mig_profile == "1g.10gb"
        assert LAYOUT[p.mig_instance] == "1g.10gb"
        assert p.gpus == 0
        assert p.gpus_touched == 1
        f.claim(p)
        taken.append((p.slices[0][1][0], p.mig_instance))
    assert len(set(taken)) == 4  # never one slice twice
    no = refused(f.find(slice_))
    assert no.code == "capacity"
    assert "1g.10gb" in no.reason
    assert refused(f.find(Request(0, mig_profile="4g.40gb", cpu_milli=1, memory_mib=1))).code == "no_such_capacity"
    # The MIG host's GPUs are not given whole: only the whole host's count as free.
    assert f.free_gpus("h100") == 8
    assert placed(f.find(Request(1))).host_ids == ["w"]
    with pytest.raises(ValueError, match="not free"):
        f.claim(Placement("h100", "eu", "host", (("m", (0,)),), 0, (), "1g.10gb", taken[0][1]))
    f.unclaim(Placement("h100", "eu", "host", (("m", (taken[0][0],)),), 0, ((2 * MILLI, GIB),), "1g.10gb", taken[0][1]))
    assert placed(f.find(slice_)).slices == (("m", (taken[0][0],)),)


def test_the_mix_is_learned_from_requests() -> None:
    mix = Mix(window=10)
    for _ in range(7):
        mix.observe(Request(1, region="eu"))
    for _ in range(3):
        mix.observe(share(250))
    types = dict(mix.types())
    assert types[Request(1)] == 0.7
    assert types[share(250)] == 0.3
    for _ in range(10):
        mix.observe(share(250))
    assert dict(mix.types()) == {share(250): 1.0}  # only the window counts


OPS = st.lists(
    st.tuples(
        st.sampled_from(["whole1", "whole2", "whole8", "share", "cpu", "gang", "mig", "release"]),
        st.integers(1, 999),
        st.integers(0, 40),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(OPS, st.sampled_from(["bestfit", "fgd"]))
def test_no_sequence_of_placements_overcommits(ops: list[tuple[str, int, int]], policy: Policy) -> None:
    """Whatever is placed and released, in any order: no GPU holds more than a whole
    one, no host gives more CPU or memory than it has, and the view agrees with the
    placements that are live."""
    hosts = [host(f"h{i}", 4 if i % 2 else 8, shared=i % 3 != 0, cpu=16 + 16 * (i % 3), mem_gib=64) for i in range(5)]
    hosts.append(host("m", 2, mig=LAYOUT, cpu=8, mem_gib=64))
    f = fleet(*hosts, policy=policy)
    live: list[Placement] = []
    requests = {
        "whole1": lambda m, c: Request(1, cpu_milli=c * 500, memory_mib=c * 512),
        "whole2": lambda m, c: Request(2),
        "whole8": lambda m, c: Request(8, cpu_milli=c * 100, memory_mib=GIB),
        "share": lambda m, c: Request(0, gpu_milli=m, cpu_milli=c * 250, memory_mib=c * 256),
        "cpu": lambda m, c: Request(0, cpu_milli=1 + c * 500, memory_mib=c * 1024),
        "gang": lambda m, c: Request(4, nodes=2, cpu_milli=c * 200, memory_mib=GIB),
        "mig": lambda m, c: Request(0, mig_profile=LAYOUT[m % 4], cpu_milli=c * 100, memory_mib=c * 64),
    }
    for kind, milli, cpu in ops:
        if kind == "release":
            if live:
                f.unclaim(live.pop(milli % len(live)))
        else:
            found = f.find(requests[kind](milli, cpu))
            if isinstance(found, Placement):
                f.claim(found)
                live.append(found)
        _check(f, hosts, live)
    for p in live:
        f.unclaim(p)
    for h in f.hosts.values():
        assert h.free == (set() if h.mig else set(range(h.gpu_count)))
        assert h.mig_free == {(g, i) for g in range(h.gpu_count) for i in range(len(h.mig))}
        assert not h.partial
        assert (h.cpu_free, h.memory_free) == (h.cpu_milli, h.memory_mib)


def _check(f: Fleet, hosts: list[HostView], live: list[Placement]) -> None:
    used: dict[tuple[str, int], int] = {}
    cpu: dict[str, int] = {}
    mem: dict[str, int] = {}
    slices: list[tuple[str, int, int]] = []
    for p in live:
        for i, (host_id, gpus) in enumerate(p.slices):
            if p.mig_profile:
                slices.append((host_id, gpus[0], p.mig_instance))
                assert f.hosts[host_id].mig[p.mig_instance] == p.mig_profile
            for g in gpus:
                if not p.mig_profile:
                    used[(host_id, g)] = used.get((host_id, g), 0) + (p.gpu_milli or MILLI)
            c, m = p.resources[i]
            cpu[host_id] = cpu.get(host_id, 0) + c
            mem[host_id] = mem.get(host_id, 0) + m
    assert len(slices) == len(set(slices))  # no MIG slice in two placements
    for host_id, gpu, i in slices:
        assert (gpu, i) not in f.hosts[host_id].mig_free
    for h in f.hosts.values():
        if h.mig:
            assert not h.free  # a MIG host's GPUs are never given whole
            held = {(g, i) for hid, g, i in slices if hid == h.host_id}
            assert h.mig_free == {(g, i) for g in range(h.gpu_count) for i in range(len(h.mig))} - held
            continue
        assert cpu.get(h.host_id, 0) <= h.cpu_milli
        assert mem.get(h.host_id, 0) <= h.memory_mib
        assert h.cpu_free == h.cpu_milli - cpu.get(h.host_id, 0)
        assert h.memory_free == h.memory_mib - mem.get(h.host_id, 0)
        for g in range(h.gpu_count):
            taken = used.get((h.host_id, g), 0)
            assert taken <= MILLI
            assert (g in h.free) == (taken == 0)
            assert h.partial.get(g, MILLI if taken == 0 else 0) == MILLI - taken or (taken in (0, MILLI))
        # The share index holds exactly the shared GPUs that can take a share.
        if h.shared:
            expected = {g: MILLI - used.get((h.host_id, g), 0) for g in range(h.gpu_count)}
            slot = MILLI + len(h.free) - 1  # a whole free GPU's bucket
            assert h.shares_at == {g: (slot if v == MILLI else v) for g, v in expected.items() if v > 0}


def test_a_host_that_stops_sharing_is_no_longer_offered_to_shares() -> None:
    f = fleet(host("s", 2, shared=True))
    assert isinstance(f.find(share(250)), Placement)
    f.upsert(host("s", 2, shared=False))  # its mode changed while idle
    assert refused(f.find(share(250))).code == "no_such_capacity"
    f.upsert(host("s", 2, shared=True))
    assert placed(f.find(share(250))).host_ids == ["s"]
