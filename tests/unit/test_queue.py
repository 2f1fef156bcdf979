"""The queue policy (minicloud_scheduling.queue): one pass's decisions, pure — no Redis,
no runtime. Each test builds a fleet view and the waiting work, calls ``plan`` and
reads the decisions; the fleet is left as it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from minicloud_scheduling.placement import Fleet, HostView
from minicloud_scheduling.queue import (
    BACKFILL_LIMIT,
    BACKFILL_WINDOW_S,
    Pass,
    Place,
    Preempt,
    Wait,
    budget_stops,
    plan,
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


def test_smaller_work_backfills_past_a_waiting_head_a_bounded_number_of_times() -> None:
    small = [wl(f"s{i}", 1, minute=i + 1) for i in range(BACKFILL_LIMIT + 2)]
    out = run(fleet(("h1", 8, 4), ("h2", 8, 8)), [wl("big", 8, nodes=2), *small])
    assert isinstance(out["big"], Wait)
    assert out["big"].code == "capacity"
    placed = [w.workload_id for w in small if isinstance(out[w.workload_id], Place)]
    assert placed == [f"s{i}" for i in range(BACKFILL_LIMIT)]
    late = out[f"s{BACKFILL_LIMIT}"]
    assert isinstance(late, Wait)
    assert (late.code, late.reason) == ("priority", "waiting behind big, queued before it")


def test_backfill_closes_once_the_head_has_waited_too_long() -> None:
    later = T0 + timedelta(seconds=BACKFILL_WINDOW_S + 1)
    out = run(fleet(("h1", 8, 4)), [wl("big", 8), wl("small", 1, minute=1)], now=later)
    assert isinstance(out["small"], Wait)
    assert out["small"].code == "priority"


def test_another_tenants_head_is_not_named() -> None:
    out = run(fleet(("h1", 8, 4)), [wl("big", 8), wl("theirs", 8, tenant="beta", minute=1)])
    assert isinstance(out["theirs"], Wait)
    assert out["theirs"].reason == "waiting behind another tenant's workload, queued before it"


def test_a_head_holds_back_only_its_own_pool() -> None:
    f = fleet(("h1", 8, 4))
    f.upsert(HostView("a1", "a100-80gb", "eu-1", "a", "r1", "a1", 8, set(range(8))))
    out = run(f, [wl("big", 8), wl("other-sku", 8, sku="a100-80gb", minute=1), wl("same", 8, minute=2)])
    assert isinstance(out["other-sku"], Place)
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
    spot = {"spot-a": [("h1", [0, 1, 2, 3])], "spot-b": [("h1", [4, 5, 6, 7])], "spot-c": [("h2", [4, 5])]}
    out = run(f, [wl("need", 8), wl("spot-wait", 8, price_class="spot", minute=1)], spot=spot)
    decision = out["need"]
    assert isinstance(decision, Preempt)
    assert decision.victims == ["spot-a", "spot-b"]
    assert isinstance(out["spot-wait"], Wait)  # spot work never preempts


def test_one_preemption_per_pass_and_none_when_spot_work_would_not_help() -> None:
    f = fleet(("h1", 8, 0))
    spot = {"spot-a": [("h1", [0, 1, 2, 3, 4, 5, 6, 7])]}
    out = run(f, [wl("first", 8), wl("second", 8, tenant="beta", minute=1)], spot=spot)
    assert isinstance(out["first"], Preempt)
    assert isinstance(out["second"], Wait)
    too_big = run(fleet(("h1", 8, 0), ("h2", 8, 0)), [wl("gang", 8, nodes=2)], spot={"s": [("h1", list(range(8)))]})
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
    out = run(fleet(("h1", 8, 0)), [wl("x", 8)], spot={"s": [("h1", list(range(8)))]}, preempt=False)
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
