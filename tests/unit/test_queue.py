"""The queue policy (minicloud_scheduling.queue): one pass's decisions, pure — no Redis,
no runtime. Each test builds a fleet view and the waiting work, calls ``plan`` and
reads the decisions; the fleet is left as it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from minicloud_scheduling.placement import Fleet, HostView
from minicloud_scheduling.queue import (
    Pass,
    Place,
    Preempt,
    Release,
    Wait,
    budget_stops,
    needs_releases,
    plan,
    reserve,
)
from minicloud_scheduling.state import Quota, Reservation, Workload, queue_score

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
H100 = "h100-80gb-sxm"


def fleet(*hosts: tuple[str, int, int], sku: str = H100, region: str = "eu-1") -> Fleet:
    """Hosts as (id, size, free GPUs)."""
    f = Fleet()
    for host_id, size, free in hosts:
        f.upsert(HostView(host_id, sku, region, "a", "r1", host_id, size, set(range(free))))
    return f


def wl(wid: str, gpus: int = 8, *, tenant: str = "acme", minute: int = 0, **kw: Any) -> Workload:
    fields: dict[str, Any] = {
        "workload_id": wid,
        "tenant_id": tenant,
        "name": wid,
        "kind": "training",
        "sku": H100,
        "gpus_per_node": gpus,
        "nodes": 1,
        "region": "eu-1",
        "price_class": "on_demand",
        "priority": 100,
        "max_duration_s": 3600,
        "client_command_id": wid,
        "submitted_at": T0 + timedelta(minutes=minute),
    }
    return Workload(**{**fields, **kw})


def run(f: Fleet, waiting: list[Workload], now: datetime | None = None, **kw: Any) -> dict[str, Place | Wait | Preempt]:
    scores = {w.workload_id: queue_score(w.priority, w.submitted_at, w.price_class) for w in waiting}
    quotas = kw.pop("quotas", {})
    p = Pass(
        now or T0 + timedelta(minutes=1),
        waiting,
        scores,
        {w.tenant_id: quotas.get(w.tenant_id, Quota()) for w in waiting},
        **kw,
    )
    before = {h: set(v.free) for h, v in f.hosts.items()}
    out = {d.workload.workload_id: d for d in plan(f, p)}
    assert {h: v.free for h, v in f.hosts.items()} == before, "plan must leave the fleet view as it was"
    return out


def test_a_pass_places_what_fits_and_later_decisions_see_earlier_ones() -> None:
    out = run(fleet(("h1", 8, 8)), [wl("a", 4), wl("b", 4, minute=1), wl("c", 4, minute=2)])
    a, b, c = out["a"], out["b"], out["c"]
    assert isinstance(a, Place)
    assert isinstance(b, Place)
    assert set(a.placement.slices[0][1]).isdisjoint(b.placement.slices[0][1])
    assert isinstance(c, Wait)
    assert c.code == "capacity"


def busy(host_id: str, gpus: range, hours: float) -> Release:
    """Running work on ``gpus`` of ``host_id`` that ends within ``hours`` of T0 at the latest."""
    return Release(T0 + timedelta(hours=hours), ((host_id, tuple(gpus)),))


def test_a_blocked_head_gets_the_earliest_reservation_running_work_allows() -> None:
    f = fleet(("h1", 8, 4), ("h2", 8, 2))  # h1: GPUs 4-7 busy; h2: 2-7 busy
    releases = [busy("h1", range(4, 8), 3), busy("h2", range(2, 5), 1), busy("h2", range(5, 8), 2)]
    before = {h: set(v.free) for h, v in f.hosts.items()}
    found = reserve(f, wl("big", 8), releases)
    assert found is not None
    at, placement = found
    assert at == T0 + timedelta(hours=2)  # h2 is whole after its second release, before h1
    assert placement.slices == (("h2", tuple(range(8))),)
    assert {h: v.free for h, v in f.hosts.items()} == before
    assert reserve(f, wl("huge", 8, nodes=3), releases) is None  # 16 GPUs: never, whatever ends


def test_work_that_ends_before_the_heads_reservation_runs_now() -> None:
    releases = [busy("h1", range(4, 8), 2)]
    short = wl("short", 2, minute=1, max_duration_s=3600)
    out = run(fleet(("h1", 8, 4)), [wl("big", 8), short], releases=releases)
    assert isinstance(out["big"], Wait)
    assert out["big"].code == "capacity"
    assert isinstance(out["short"], Place)  # done within the hour; big can start in two


def test_work_that_would_outlast_the_reservation_waits_unless_other_gpus_hold_it() -> None:
    # big needs all of h1 (free in 2 hours); h2 has 2 GPUs nobody reserved.
    releases = [busy("h1", range(4, 8), 2)]
    f = fleet(("h1", 8, 4), ("h2", 8, 2))
    long2 = wl("long2", 2, minute=1, max_duration_s=3 * 3600)
    long3 = wl("long3", 3, minute=2, max_duration_s=3 * 3600)
    out = run(f, [wl("big", 8), long2, long3], releases=releases)
    placed = out["long2"]
    assert isinstance(placed, Place)
    assert placed.placement.host_ids == ["h2"]  # not the GPUs big is waiting for
    held = out["long3"]
    assert isinstance(held, Wait)
    assert held.code == "priority"
    due = (T0 + timedelta(hours=2)).isoformat()
    assert (
        held.reason == f"waiting behind big, queued before it: running now would delay its start, due to start by {due}"
    )


def test_easy_protects_the_first_of_a_pool_conservative_every_blocked_workload() -> None:
    # a (8) can have h1 in 2 h; b (8) then h2 in 3 h. c runs 4 h, d 2.5 h, on 1 GPU.
    releases = [busy("h1", range(4, 8), 2), busy("h2", range(3, 8), 3)]
    waiting = [
        wl("a", 8),
        wl("b", 8, minute=1),
        wl("c", 1, minute=2, max_duration_s=4 * 3600),
        wl("d", 1, minute=3, max_duration_s=150 * 60),
    ]
    easy = run(fleet(("h1", 8, 4), ("h2", 8, 3)), waiting, releases=releases, backfill="easy")
    conservative = run(fleet(("h1", 8, 4), ("h2", 8, 3)), waiting, releases=releases, backfill="conservative")
    for out in (easy, conservative):
        assert isinstance(out["a"], Wait)
        assert isinstance(out["b"], Wait)
        assert isinstance(out["d"], Place)  # ends before b is due: fine for both
        assert out["d"].placement.host_ids == ["h2"]
    assert isinstance(easy["c"], Place)  # EASY protects a only: c may delay b
    assert isinstance(conservative["c"], Wait)  # conservative protects b too
    assert conservative["c"].code == "priority"
    assert "waiting behind b" in conservative["c"].reason


def test_a_head_that_could_never_fit_holds_nothing_back() -> None:
    # Only 8 GPUs of the pool are schedulable: a 16-GPU gang waits for more hosts.
    out = run(fleet(("h1", 8, 0), ("h2", 8, 8)), [wl("gang", 8, nodes=2), wl("long", 8, minute=1)], releases=[])
    assert isinstance(out["gang"], Wait)
    assert isinstance(out["long"], Place)


def test_when_running_work_ends_is_read_only_when_a_reservation_could_hold_something_back() -> None:
    f = fleet(("h1", 8, 4))
    unknown = Pass(T0, [wl("big", 8), wl("small", 1, minute=1)], {}, {"acme": Quota()})
    unknown.scores = {w.workload_id: queue_score(w.priority, w.submitted_at) for w in unknown.waiting}
    decisions = plan(f, unknown)
    assert needs_releases(unknown, decisions)  # small was placed not knowing big's reservation
    alone = Pass(T0, [wl("small", 1)], {}, {"acme": Quota()})
    alone.scores = {"small": queue_score(100, T0)}
    assert not needs_releases(alone, plan(f, alone))


def test_another_tenants_head_is_not_named() -> None:
    releases = [busy("h1", range(4, 8), 2)]
    out = run(
        fleet(("h1", 8, 4)),
        [wl("big", 8), wl("theirs", 4, tenant="beta", minute=1, max_duration_s=86_400)],
        releases=releases,
    )
    assert isinstance(out["theirs"], Wait)
    assert out["theirs"].reason.startswith("waiting behind another tenant's workload, queued before it:")


def test_a_head_holds_back_only_its_own_pool() -> None:
    f = fleet(("h1", 8, 4))
    f.upsert(HostView("a1", "a100-80gb", "eu-1", "a", "r1", "a1", 8, set(range(8))))
    releases = [busy("h1", range(4, 8), 2)]
    waiting = [
        wl("big", 8),
        wl("other-sku", 8, sku="a100-80gb", minute=1),
        wl("same", 4, minute=2, max_duration_s=86_400),
    ]
    out = run(f, waiting, releases=releases)
    assert isinstance(out["other-sku"], Place)  # another pool's GPUs
    assert isinstance(out["same"], Wait)
    assert out["same"].code == "priority"


def test_quota_and_budget_waits_hold_up_nobody() -> None:
    quotas = {"acme": Quota(limits={"*|*": 4})}
    out = run(fleet(("h1", 8, 8)), [wl("over", 8), wl("next", 8, tenant="beta", minute=1)], quotas=quotas)
    assert isinstance(out["over"], Wait)
    assert out["over"].code == "quota"
    assert "holds 0 of its 4 GPUs" in out["over"].reason
    assert isinstance(out["next"], Place)
    blocked = run(fleet(("h1", 8, 8)), [wl("x", 8)], budget_blocks={"acme": "hard budget reached"})
    assert isinstance(blocked["x"], Wait)
    assert (blocked["x"].code, blocked["x"].reason) == (
        "budget",
        "the tenant's budget is exhausted: hard budget reached",
    )


def test_quota_counts_placements_earlier_in_the_same_pass() -> None:
    out = run(fleet(("h1", 8, 8)), [wl("a", 4), wl("b", 4, minute=1)], quotas={"acme": Quota(limits={f"{H100}|*": 6})})
    assert isinstance(out["a"], Place)
    assert isinstance(out["b"], Wait)
    assert out["b"].code == "quota"


def test_reserved_work_runs_only_within_a_reservation_in_force() -> None:
    term = Reservation(sku=H100, region="eu-1", gpus=4, starts_at=T0, ends_at=T0 + timedelta(days=30))
    quotas = {"acme": Quota(reservations={"r1": term})}
    out = run(
        fleet(("h1", 8, 8)),
        [wl("r", 4, price_class="reserved"), wl("r2", 4, price_class="reserved", minute=1)],
        quotas=quotas,
    )
    assert isinstance(out["r"], Place)
    assert isinstance(out["r2"], Wait)
    assert out["r2"].code == "reservation"
    assert "hold 4 of 4 GPUs" in out["r2"].reason
    expired = run(fleet(("h1", 8, 8)), [wl("r", 4, price_class="reserved")], now=T0 + timedelta(days=31), quotas=quotas)
    assert isinstance(expired["r"], Wait)
    assert "no reservation" in expired["r"].reason


def test_on_demand_work_preempts_only_the_spot_work_whose_gpus_it_needs() -> None:
    f = fleet(("h1", 8, 0), ("h2", 8, 4))  # h1 full of spot work; h2 half taken by on-demand work
    spot = {
        "spot-a": [("h1", [0, 1, 2, 3], 0, 0)],
        "spot-b": [("h1", [4, 5, 6, 7], 0, 0)],
        "spot-c": [("h2", [4, 5], 0, 0)],
    }
    out = run(f, [wl("need", 8), wl("spot-wait", 8, price_class="spot", minute=1)], spot=spot)
    decision = out["need"]
    assert isinstance(decision, Preempt)
    assert decision.victims == ["spot-a", "spot-b"]
    assert isinstance(out["spot-wait"], Wait)  # spot work never preempts


def test_one_preemption_per_pass_and_none_when_spot_work_would_not_help() -> None:
    f = fleet(("h1", 8, 0))
    spot = {"spot-a": [("h1", [0, 1, 2, 3, 4, 5, 6, 7], 0, 0)]}
    out = run(f, [wl("first", 8), wl("second", 8, tenant="beta", minute=1)], spot=spot)
    assert isinstance(out["first"], Preempt)
    assert isinstance(out["second"], Wait)
    too_big = run(
        fleet(("h1", 8, 0), ("h2", 8, 0)), [wl("gang", 8, nodes=2)], spot={"s": [("h1", list(range(8)), 0, 0)]}
    )
    assert isinstance(too_big["gang"], Wait)
    assert too_big["gang"].code in ("capacity", "topology")


def test_spot_work_is_asked_for_only_when_waiting_work_could_use_it() -> None:
    from minicloud_scheduling.queue import needs_spot

    f = fleet(("h1", 8, 4))
    fits = Pass(T0, [wl("small", 2)], {"small": 1.0}, {"acme": Quota()})
    assert not needs_spot(fits, plan(f, fits))
    waits = Pass(T0, [wl("big", 8)], {"big": 1.0}, {"acme": Quota()})
    assert needs_spot(waits, plan(f, waits))
    spot_only = Pass(T0, [wl("s", 8, price_class="spot")], {"s": 1.0}, {"acme": Quota()})
    assert not needs_spot(spot_only, plan(f, spot_only))  # spot work never preempts


def test_placements_only_pass_makes_no_heads_and_no_preemption() -> None:
    out = run(fleet(("h1", 8, 0)), [wl("x", 8)], spot={"s": [("h1", list(range(8)), 0, 0)]}, preempt=False)
    assert isinstance(out["x"], Wait)


def test_budget_stops_end_everything_at_the_crossing_or_only_spot_and_dev_now() -> None:
    start = T0
    running = [
        wl("train", 8, status="running", started_at=start),
        wl("spot", 8, price_class="spot", status="running", started_at=start),
        wl("dev", 1, kind="dev", status="running", started_at=start),
        wl("queued", 8),
    ]
    now = T0 + timedelta(hours=2)
    reached = T0 + timedelta(hours=1)
    hard = budget_stops(running, "hard_budget", reached, now)
    assert [(w.workload_id, at) for w, at in hard] == [("train", reached), ("spot", reached), ("dev", reached)]
    credit = budget_stops(running, "credit_exhausted", reached, now)
    assert [(w.workload_id, at) for w, at in credit] == [("spot", now), ("dev", now)]
    late_start = [wl("new", 8, status="running", started_at=T0 + timedelta(hours=1, minutes=30))]
    ((_, at),) = budget_stops(late_start, "hard_budget", reached, now)
    assert at == T0 + timedelta(hours=1, minutes=30)  # never before it started


def test_in_a_simulated_week_backfill_by_reservation_starts_no_head_late_and_idles_less() -> None:
    """The decision core driven by the benchmark's queue simulation (bench/queue_bench.py):
    512 GPUs, a week of the mixed workload, the same arrivals for each policy."""
    from bench.queue_bench import simulate

    window = simulate("window", days=7.0, seed=0)
    easy = simulate("easy", days=7.0, seed=0)
    assert easy.held > 10  # heads were given reservations ...
    assert easy.late_heads == 0  # ... and none started later than its first
    assert easy.share_with_free < window.share_with_free / 2
    assert easy.wait_p90_h < window.wait_p90_h
    # Utilization is bounded by the load offered (95%): no worse, give or take a pass.
    assert easy.utilization >= window.utilization - 0.005


def test_work_that_accepts_h100_or_h200_runs_on_whichever_is_free() -> None:
    f = fleet(("h1", 8, 0))  # the H100s are busy
    f.upsert(HostView("x1", "h200-141gb-sxm", "eu-1", "a", "r1", "x1", 8, set(range(8))))
    either = wl("either", 8, sku=None, skus=[H100, "h200-141gb-sxm"])
    h100_only = wl("h100-only", 8, minute=1)
    out = run(f, [either, h100_only])
    placed = out["either"]
    assert isinstance(placed, Place)
    assert placed.placement.sku == "h200-141gb-sxm"
    assert isinstance(out["h100-only"], Wait)
    assert out["h100-only"].code == "capacity"
    assert either.request().skus == (H100, "h200-141gb-sxm")


def test_a_submissions_skus_are_kept_as_one_sku_or_a_sorted_set() -> None:
    from minicloud_scheduling.state import asked_skus

    h200 = "h200-141gb-sxm"
    assert asked_skus(None, [h200, H100]) == (None, [H100, h200])
    assert asked_skus(None, [H100, H100]) == (H100, None)  # a set of one is that SKU
    assert asked_skus(H100, [h200, H100]) == (H100, None)  # sku wins
    assert asked_skus(None, None) == (None, None)  # any


def test_spot_work_holding_the_cpu_is_preempted_with_it_and_its_cpu_is_given_back() -> None:
    """A 1-GPU host whose spot work holds its GPU and all its CPU: the on-demand job
    needs both, so the simulation frees both (not the GPU alone) and names the spot
    work; afterwards the view holds exactly what it held before."""
    f = Fleet()
    f.upsert(
        HostView(
            "h1", H100, "eu-1", "a", "r1", "h1", 1, set(), cpu_milli=4000, memory_mib=8192, cpu_free=0, memory_free=0
        )
    )
    spot = {"s": [("h1", [0], 4000, 8192)]}
    out = run(f, [wl("need", 1)], spot=spot)
    assert isinstance(out["need"], Preempt)
    assert out["need"].victims == ["s"]
    view = f.hosts["h1"]
    assert (view.free, view.cpu_free, view.memory_free) == (set(), 0, 0)
    # Without its CPU in the spot index (an entry from before CPU was kept) the GPU
    # alone would not make room: nothing is stopped for nothing.
    out = run(f, [wl("need", 1)], spot={"s": [("h1", [0], 0, 0)]})
    assert isinstance(out["need"], Wait)
