"""Placement: all-or-nothing, compact, best fit, and reasons a tenant can read."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from minicloud_scheduling.placement import Fleet, HostView, NoPlacement, Placement, Request


def host(
    host_id: str,
    free: int = 8,
    *,
    sku: str = "h100",
    region: str = "eu",
    zone: str = "a",
    rack: str = "r1",
    domain: str | None = None,
    size: int = 8,
) -> HostView:
    return HostView(host_id, sku, region, zone, rack, domain or host_id, size, set(range(free)))


def fleet(*hosts: HostView) -> Fleet:
    f = Fleet()
    for h in hosts:
        f.upsert(h)
    return f


def placed(result: Placement | NoPlacement) -> Placement:
    assert isinstance(result, Placement), result
    return result


def test_single_gpu_goes_to_the_fullest_host_that_fits() -> None:
    f = fleet(host("empty", 8), host("half", 4), host("one", 1))
    p = placed(f.find(Request(1)))
    assert p.slices == (("one", (0,)),)
    p = placed(f.find(Request(2)))
    assert p.host_ids == ["half"]  # best fit keeps the empty host whole


def test_ties_go_to_the_most_occupied_nvlink_domain() -> None:
    f = fleet(
        host("a1", 8, domain="d-empty"),
        host("a2", 8, domain="d-empty"),
        host("b1", 8, domain="d-busy"),
        host("b2", 0, domain="d-busy"),
    )
    assert placed(f.find(Request(8))).host_ids == ["b1"]


def test_gang_prefers_one_nvlink_domain_then_rack_then_zone() -> None:
    f = fleet(
        host("z1", zone="a", rack="r1", domain="d1"),
        host("z2", zone="a", rack="r2", domain="d2"),
        host("d1", zone="b", rack="r3", domain="nvl"),
        host("d2", zone="b", rack="r3", domain="nvl"),
    )
    p = placed(f.find(Request(8, nodes=2)))
    assert (p.level, sorted(p.host_ids)) == ("domain", ["d1", "d2"])
    f.claim(p)
    p = placed(f.find(Request(8, nodes=2)))
    assert (p.level, sorted(p.host_ids)) == ("zone", ["z1", "z2"])


def test_gang_is_all_or_nothing_and_never_crosses_regions() -> None:
    f = fleet(host("e1", region="eu"), host("u1", region="us"))
    result = f.find(Request(8, nodes=2))
    assert isinstance(result, NoPlacement)
    assert result.code == "topology"
    assert f.free_gpus("h100") == 16  # nothing claimed


def test_aggregate_capacity_is_not_enough_for_a_gang_kueue_case() -> None:
    """Kueue's users' complaint: a 2x8-GPU job admitted onto nodes with 7/7/8 free GPUs
    (22 free in aggregate) hung. Here it waits, and says why."""
    f = fleet(host("n1", 7), host("n2", 7), host("n3", 8))
    result = f.find(Request(8, nodes=2))
    assert isinstance(result, NoPlacement)
    assert result.code == "topology"
    assert "22" in result.reason
    assert "2 host(s) with 8 free GPUs" in result.reason


def test_reasons() -> None:
    f = fleet(host("n1", 2), host("n2", 0))
    assert f.find(Request(1, sku="b200")).code == "no_such_capacity"
    assert f.find(Request(16)).code == "too_large"
    assert f.find(Request(8, nodes=3)).code == "too_large"
    waiting = f.find(Request(4))
    assert isinstance(waiting, NoPlacement)
    assert waiting.code == "capacity"
    assert waiting.reason.startswith("waiting for capacity: 2 of the 4")


def test_draining_hosts_take_no_new_work_and_any_sku_works() -> None:
    f = fleet(host("h", 8, sku="h100"), host("l", 8, sku="l40s"))
    f.set_schedulable("h", False)
    assert placed(f.find(Request(4))).sku == "l40s"
    assert isinstance(f.find(Request(4, sku="h100")), NoPlacement)


def test_claim_and_release() -> None:
    f = fleet(host("h", 8))
    p = placed(f.find(Request(3)))
    f.claim(p)
    assert f.free_gpus("h100") == 5
    assert placed(f.find(Request(5))).slices == (("h", (3, 4, 5, 6, 7)),)
    f.release("h", [0, 1, 2])
    assert f.free_gpus("h100") == 8


def test_largest_gangs() -> None:
    f = fleet(host("a", 8), host("b", 8), host("c", 3, zone="b"))
    assert f.largest_gangs("h100", "eu") == {1: 3, 2: 3, 3: 3, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2}


# --- properties -------------------------------------------------------------------


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    n = draw(st.integers(1, 24))
    hosts = []
    for i in range(n):
        size = draw(st.sampled_from([1, 4, 8]))
        hosts.append(
            HostView(
                f"h{i}",
                draw(st.sampled_from(["h100", "a100"])),
                draw(st.sampled_from(["eu", "us"])),
                draw(st.sampled_from(["a", "b"])),
                f"r{draw(st.integers(0, 3))}",
                f"d{draw(st.integers(0, 5))}",
                size,
                set(draw(st.sets(st.integers(0, size - 1)))),
            )
        )
    return fleet(*hosts)


requests = st.builds(
    Request,
    gpus_per_node=st.integers(1, 8),
    nodes=st.integers(1, 4),
    sku=st.sampled_from([None, "h100", "a100"]),
    region=st.sampled_from([None, "eu", "us"]),
)


@settings(max_examples=300, deadline=None)
@given(f=fleets(), reqs=st.lists(requests, max_size=30), release_every=st.integers(2, 5))
def test_placements_are_valid_and_never_share_a_gpu(f: Fleet, reqs: list[Request], release_every: int) -> None:
    held: dict[tuple[str, int], int] = {}
    live: list[Placement] = []
    for i, req in enumerate(reqs):
        result = f.find(req)
        if isinstance(result, Placement):
            hosts = [f.hosts[h] for h in result.host_ids]
            assert len(set(result.host_ids)) == req.nodes  # distinct hosts, all of them
            assert all(len(g) == req.gpus_per_node for _, g in result.slices)
            assert {h.sku for h in hosts} == {result.sku}
            assert {h.region for h in hosts} == {result.region}  # never across regions
            assert req.sku in (None, result.sku)
            assert req.region in (None, result.region)
            assert all(h.schedulable for h in hosts)
            if result.level != "host":
                assert len({h.key(result.level) for h in hosts}) == 1  # compact at its level
            for host_id, gpus in result.slices:
                for gpu in gpus:
                    assert (host_id, gpu) not in held, "a GPU in two allocations"
                    held[(host_id, gpu)] = i
            f.claim(result)
            live.append(result)
        else:
            assert result.reason
        if live and i % release_every == 0:
            gone = live.pop(0)
            for host_id, gpus in gone.slices:
                f.release(host_id, gpus)
                for gpu in gpus:
                    del held[(host_id, gpu)]
    # The indexes agree with the hosts.
    for sku in f.skus():
        assert f.free_gpus(sku) == sum(h.usable for h in f.hosts.values() if h.sku == sku)


@settings(max_examples=200, deadline=None)
@given(f=fleets(), req=requests)
def test_a_refusal_means_no_valid_placement_exists_for_single_hosts(f: Fleet, req: Request) -> None:
    """Completeness for single-host requests: if it says no, no schedulable host fits."""
    single = Request(req.gpus_per_node, 1, req.sku, req.region)
    result = f.find(single)
    fits = [
        h
        for h in f.hosts.values()
        if h.schedulable
        and h.usable >= single.gpus_per_node
        and single.sku in (None, h.sku)
        and single.region in (None, h.region)
    ]
    assert isinstance(result, Placement) == bool(fits)


@settings(max_examples=300, deadline=None)
@given(f=fleets(), req=requests)
def test_a_refusal_means_no_group_holds_the_gang(f: Fleet, req: Request) -> None:
    result = f.find(req)
    possible = False
    for h0 in f.hosts.values():
        if req.sku not in (None, h0.sku) or req.region not in (None, h0.region):
            continue
        for level in ("domain", "rack", "zone", "region"):
            same = [
                h
                for h in f.hosts.values()
                if h.sku == h0.sku and h.key(level) == h0.key(level) and h.schedulable and h.usable >= req.gpus_per_node
            ]
            possible = possible or len(same) >= req.nodes
    assert isinstance(result, Placement) == possible


def test_queue_order_is_class_then_priority_then_arrival() -> None:
    from datetime import UTC, datetime, timedelta

    from minicloud_scheduling.state import queue_score

    t = datetime(2026, 11, 25, tzinfo=UTC)
    later = t + timedelta(milliseconds=1)
    assert queue_score(100, t, "reserved") < queue_score(1000, t, "on_demand") < queue_score(1000, t, "spot")
    assert queue_score(500, later) < queue_score(100, t)  # priority before arrival
    assert queue_score(100, t) < queue_score(100, later)  # then first come, first served


@settings(max_examples=200, deadline=None)
@given(
    f=fleets(),
    steps=st.lists(
        st.one_of(
            requests.map(lambda r: ("place", r)),
            st.tuples(st.just("fault"), st.integers(0, 23), st.integers(0, 7)),
            st.tuples(st.just("drain"), st.integers(0, 23), st.booleans()),
            st.just(("release", None)),
        ),
        max_size=40,
    ),
)
def test_faults_and_drains_never_let_placement_use_a_bad_or_held_gpu(f: Fleet, steps: list[tuple[Any, ...]]) -> None:
    faulted: set[tuple[str, int]] = set()
    held: dict[tuple[str, int], int] = {}
    live: list[Placement] = []
    for i, step in enumerate(steps):
        kind = step[0]
        if kind == "place":
            result = f.find(step[1])
            if isinstance(result, Placement):
                for host_id, gpus in result.slices:
                    assert f.hosts[host_id].schedulable, "placed on a draining host"
                    for g in gpus:
                        assert (host_id, g) not in faulted, "placed on a faulted GPU"
                        assert (host_id, g) not in held, "a GPU in two allocations"
                        held[(host_id, g)] = i
                f.claim(result)
                live.append(result)
        elif kind == "fault":
            host_id = f"h{step[1]}"
            # A fault takes the GPU out of the view; scheduling first releases any
            # allocation on it (tested in the service), so only a free GPU is faulted here.
            if host_id in f.hosts and step[2] < f.hosts[host_id].gpu_count and (host_id, step[2]) not in held:
                h = f.hosts[host_id]
                f.upsert(
                    HostView(
                        h.host_id,
                        h.sku,
                        h.region,
                        h.zone,
                        h.rack,
                        h.domain,
                        h.gpu_count,
                        h.free - {step[2]},
                        h.schedulable,
                        h.version + 1,
                    )
                )
                faulted.add((host_id, step[2]))
        elif kind == "drain":
            if f"h{step[1]}" in f.hosts:
                f.set_schedulable(f"h{step[1]}", not step[2])
        elif live:
            gone = live.pop(0)
            for host_id, gpus in gone.slices:
                f.release(host_id, gpus)
                for g in gpus:
                    del held[(host_id, g)]
    for sku in f.skus():
        assert f.free_gpus(sku) == sum(h.usable for h in f.hosts.values() if h.sku == sku)


def test_a_gang_answer_is_reused_only_while_its_skus_hosts_are_unchanged() -> None:
    """A decision for any SKU asks every SKU; the answer for a SKU none of whose hosts
    changed is kept, and any claim, release, drain or new host of it renews it."""
    f = fleet(
        *(host(f"h{i}", rack="r1") for i in range(2)),
        *(host(f"h{i}", rack="r2") for i in range(2, 4)),
        host("a0", sku="a100", rack="r3"),
        host("a1", sku="a100", rack="r3"),
    )
    gang = Request(8, nodes=2, sku="h100")
    first = placed(f.find(gang))
    assert placed(f.find(gang)) is first  # nothing changed: the same answer, not searched again
    f.claim(placed(f.find(Request(8, nodes=2, sku="a100"))))  # another SKU changed
    assert placed(f.find(gang)) is first
    f.claim(first)
    second = placed(f.find(gang))
    assert set(second.host_ids).isdisjoint(first.host_ids)  # never the GPUs just claimed
    f.claim(second)
    assert isinstance(f.find(gang), NoPlacement)
    f.release(first.host_ids[0], range(8))
    f.release(first.host_ids[1], range(8))
    assert set(placed(f.find(gang)).host_ids) == set(first.host_ids)
    f.set_schedulable(first.host_ids[0], False)
    assert isinstance(f.find(gang), NoPlacement)
    f.upsert(host("h9", rack="r1"))
    f.upsert(host("h8", rack="r1"))
    assert set(placed(f.find(gang)).host_ids) <= {"h1", "h8", "h9"}


def test_a_refusal_names_the_largest_host_of_the_skus_asked_for_as_hosts_come_and_go() -> None:
    f = fleet(host("big", sku="h100", size=8), host("small", 4, sku="l40s", size=4))
    why = f.find(Request(6, sku="l40s"))
    assert isinstance(why, NoPlacement)
    assert (why.code, why.reason) == ("too_large", "no host has 6 l40s: the largest has 4")
    f.upsert(host("bigger", 8, sku="l40s", size=8))
    assert placed(f.find(Request(6, sku="l40s"))).host_ids == ["bigger"]
    f.remove("bigger")
    f.remove("small")
    why = f.find(Request(6, sku="l40s"))
    assert isinstance(why, NoPlacement)
    assert why.code == "no_such_capacity"


def _index_of(f: Fleet) -> dict[tuple[str, str, str], tuple[list[frozenset[str]], int, int]]:
    return {k: ([frozenset(b) for b in g.buckets], g.free, g.hosts) for k, g in f._groups.items() if g.hosts}


@settings(max_examples=200, deadline=None)
@given(
    f=fleets(),
    steps=st.lists(
        st.one_of(
            requests.map(lambda r: ("place", r)),
            st.tuples(st.just("drain"), st.integers(0, 23), st.booleans()),
            st.tuples(st.just("release"), st.integers(0, 100)),
        ),
        max_size=40,
    ),
)
def test_claims_releases_and_drains_keep_the_index_equal_to_one_built_afresh(
    f: Fleet, steps: list[tuple[Any, ...]]
) -> None:
    """Claims, releases and drains move a host between its groups' buckets in place;
    the index must be what indexing every host again from scratch gives."""
    live: list[Placement] = []
    for step in steps:
        if step[0] == "place":
            result = f.find(step[1])
            if isinstance(result, Placement):
                f.claim(result)
                live.append(result)
        elif step[0] == "drain":
            if f"h{step[1]}" in f.hosts:
                f.set_schedulable(f"h{step[1]}", not step[2])
        elif live:
            for host_id, gpus in live.pop(step[1] % len(live)).slices:
                f.release(host_id, gpus)
    fresh = Fleet()
    for h in f.hosts.values():
        fresh.upsert(
            HostView(h.host_id, h.sku, h.region, h.zone, h.rack, h.domain, h.gpu_count, set(h.free), h.schedulable)
        )
    assert _index_of(f) == _index_of(fresh)
    assert f.skus() == fresh.skus()
    for sku in f.skus():
        assert f.free_gpus(sku) == fresh.free_gpus(sku)


def test_a_request_for_a_set_of_skus_takes_one_of_them_and_a_gang_one_sku_for_all_its_nodes() -> None:
    f = Fleet()
    for i, sku in enumerate(["h100-80gb-sxm", "h200-141gb-sxm", "a100-80gb-sxm"]):
        f.upsert(HostView(f"x{i}", sku, "eu-1", "a", "r1", f"d{i}", 8, set(range(8))))
    either = ("h100-80gb-sxm", "h200-141gb-sxm")
    one = f.find(Request(4, skus=either))
    assert isinstance(one, Placement)
    assert one.sku in either
    # 16 GPUs as 2 x 8: the set has 16 GPUs in total, but no SKU of it has two hosts.
    gang = f.find(Request(8, nodes=2, skus=either))
    assert isinstance(gang, NoPlacement)
    assert gang.code == "too_large"
    assert "h100-80gb-sxm or h200-141gb-sxm" in gang.reason
    a100_busy = f.find(Request(8, skus=("a100-80gb-sxm", "l40s-48gb-pcie")))
    assert isinstance(a100_busy, Placement)
    assert a100_busy.sku == "a100-80gb-sxm"


def test_a_refusal_is_explained_anew_once_the_fleet_changed() -> None:
    f = Fleet()
    for i in range(2):
        f.upsert(HostView(f"h{i}", "h100-80gb-sxm", "eu-1", "a", "r1", f"d{i}", 8, set()))
    request = Request(8, sku="h100-80gb-sxm")
    first = f.find(request)
    assert isinstance(first, NoPlacement)
    assert "0 of the 8" in first.reason
    assert f.find(request) is first  # nothing changed: the same answer, not recomputed
    f.release("h0", [0, 1, 2])
    second = f.find(request)
    assert isinstance(second, NoPlacement)
    assert "3 of the 8" in second.reason
    f.release("h1", range(8))
    assert isinstance(f.find(request), Placement)
    f.set_schedulable("h1", False)
    drained = f.find(request)
    assert isinstance(drained, NoPlacement)
    assert "3 of the 8" in drained.reason
