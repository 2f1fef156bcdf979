"""The scheduling service with the real inventory service, on a real Redis."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from minicloud_inventory.app import build as build_inventory
from minicloud_inventory.capacity import read_summary
from minicloud_scheduling.app import build as build_scheduling
from minicloud_scheduling.store import budget_key
from minicloud_shared.contracts import Payload, decode
from minicloud_shared.contracts.inventory import DrainHost, ReportGpuFault
from minicloud_shared.contracts.scheduling import CompleteWorkload, SetQuota, SubmitWorkload
from minicloud_shared.contracts.topology import INVENTORY_EVENTS, SCHEDULING_EVENTS
from minicloud_shared.runtime import ServiceRuntime, publish
from minicloud_shared.runtime.entrypoint import create_runtime
from minicloud_shared.settings import Settings
from tests.support.fleet import host, host_facts, submit
from tests.support.harness import wait_until

pytestmark = pytest.mark.broker


def rt(service: str, redis_url: str, **kw: Any) -> ServiceRuntime:
    build = build_inventory if service == "inventory" else build_scheduling
    settings = Settings(
        service=service,
        redis_url=redis_url,
        reclaim_idle_ms=2000,
        block_ms=50,
        log_format="console",
        log_level="WARNING",
        **kw,
    )
    return create_runtime(service, build, settings)


@pytest.fixture
async def cloud(redis_url: str) -> AsyncIterator[tuple[Redis, list[ServiceRuntime]]]:
    redis = Redis.from_url(redis_url)
    runtimes = [rt("inventory", redis_url), rt("scheduling", redis_url)]
    for r in runtimes:
        await r.start()
    yield redis, runtimes
    for r in runtimes:
        await r.stop()
    await redis.aclose()


async def send(redis: Redis, *payloads: Payload, tenant: str | None = "t-1") -> None:
    for p in payloads:
        await publish(redis, p, producer="gateway", tenant_id=tenant)


async def sched_events(redis: Redis) -> list[Any]:
    return [decode(f).payload for _, f in await redis.xrange(SCHEDULING_EVENTS)]


async def count(redis: Redis, kind: str, n: int) -> bool:
    return sum(1 for e in await sched_events(redis) if e.event_type.endswith(kind)) >= n


async def test_a_gang_is_placed_compactly_runs_and_completes(cloud: tuple[Redis, list[ServiceRuntime]]) -> None:
    redis, _ = cloud
    await send(
        redis, host(1, rack=1), host(2, rack=2), host(3, rack=3, domain=9), host(4, rack=3, domain=9), tenant=None
    )
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 4), 10, "4 hosts")
    await send(redis, submit("gang", 8, nodes=2))
    await wait_until(lambda: count(redis, "workload_started", 1), 10, "the gang to start")
    placed = next(e for e in await sched_events(redis) if e.event_type.endswith("allocation_placed"))
    assert sorted(s.host_id for s in placed.gpus) == ["h3", "h4"]  # the one NVLink domain that holds it
    assert placed.gpu_count == 16
    await wait_until(lambda: _allocated(redis, 16), 10, "inventory to count 16 busy GPUs")
    await send(redis, CompleteWorkload(workload_id="gang"))
    await wait_until(lambda: count(redis, "workload_ended", 1), 10, "completion")
    released = next(e for e in await sched_events(redis) if e.event_type.endswith("allocation_released"))
    assert (released.allocation_id, released.reason) == (placed.allocation_id, "completed")
    await wait_until(lambda: _allocated(redis, 0), 10, "inventory to count them free again")


async def _len(redis: Redis, stream: str, n: int) -> bool:
    return int(await redis.xlen(stream)) >= n


async def _allocated(redis: Redis, n: int) -> bool:
    return (await read_summary(redis)).fleet.allocated == n


async def test_queued_work_says_why_and_starts_when_capacity_frees(cloud: tuple[Redis, list[ServiceRuntime]]) -> None:
    redis, _ = cloud
    await send(redis, host(1), tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 1), 10, "a host")
    await send(redis, submit("first", 8), submit("second", 8))
    await wait_until(lambda: count(redis, "workload_queued", 1), 10, "the second to queue")
    queued = next(e for e in await sched_events(redis) if e.event_type.endswith("workload_queued"))
    assert (queued.workload_id, queued.code) == ("second", "capacity")
    assert (
        queued.reason == "waiting for capacity: 0 of the 8 h100-80gb-sxm GPUs it needs are free in any region"
        or queued.reason.startswith("waiting for capacity: 0 of the 8")
    )
    await send(redis, CompleteWorkload(workload_id="first"))
    await wait_until(lambda: count(redis, "workload_started", 2), 10, "the second to start")


async def test_rejections_and_idempotent_submission(cloud: tuple[Redis, list[ServiceRuntime]]) -> None:
    redis, _ = cloud
    await send(redis, host(1), tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 1), 10, "a host")
    await send(redis, submit("big", 16), submit("odd", 1).model_copy(update={"sku": "tpu-v5"}))
    await send(redis, submit("once", 1), submit("once", 1))  # a client retrying with its key
    await send(redis, submit("once", 2))  # the same key for another request
    await wait_until(lambda: count(redis, "workload_rejected", 3), 10, "3 rejections")
    events = await sched_events(redis)
    rejected = {(e.workload_id, e.code) for e in events if e.event_type.endswith("rejected")}
    assert rejected == {("big", "too_large"), ("odd", "no_such_capacity"), ("once", "conflict")}
    assert sum(1 for e in events if e.event_type.endswith("workload_accepted")) == 1


async def test_gpu_fault_requeues_and_places_elsewhere(cloud: tuple[Redis, list[ServiceRuntime]]) -> None:
    from tests.support.harness import scrape

    redis, (_, scheduling) = cloud
    await send(redis, host(1), host(2), tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 2), 10, "2 hosts")
    await send(redis, submit("job", 8))
    await wait_until(lambda: count(redis, "workload_started", 1), 10, "start")
    first = next(e for e in await sched_events(redis) if e.event_type.endswith("allocation_placed"))
    await send(redis, ReportGpuFault(host_id=first.gpus[0].host_id, gpu_index=5, code="xid-79"), tenant=None)
    await wait_until(lambda: count(redis, "workload_started", 2), 10, "a second start")
    events = await sched_events(redis)
    released = next(e for e in events if e.event_type.endswith("allocation_released"))
    assert (released.allocation_id, released.reason) == (first.allocation_id, "gpu_fault")
    requeued = next(e for e in events if e.event_type.endswith("workload_queued"))
    assert requeued.code == "requeued"
    assert "xid-79" in requeued.reason
    second = [e for e in events if e.event_type.endswith("allocation_placed")][1]
    assert second.gpus[0].host_id != first.gpus[0].host_id
    assert second.allocation_id != first.allocation_id
    figures = await scrape(scheduling)
    assert figures[("minicloud_scheduling_requeues_total", (("reason", "gpu_fault"),))] == 1
    assert ("minicloud_scheduling_requeues_total", (("reason", "drain"),)) not in figures


@pytest.mark.parametrize("run", range(3))
async def test_quota_holds_with_two_replicas_s08(redis_url: str, run: int) -> None:
    """S08: a quota of 5 GPUs, 50 concurrent submissions, two scheduling replicas:
    exactly 5 placed, every run."""
    redis = Redis.from_url(redis_url)
    inventory = rt("inventory", redis_url)
    replicas = [rt("scheduling", redis_url, batch_size=4), rt("scheduling", redis_url, batch_size=4)]
    for r in (inventory, *replicas):
        await r.start()
    try:
        await send(redis, *[host(i) for i in range(10)], tenant=None)
        await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 10), 10, "10 hosts")
        await send(redis, SetQuota(sku="*", region="*", gpus=5), tenant="t-s08")
        await wait_until(lambda: count(redis, "quota_set", 1), 10, "the quota in force")
        await send(redis, *[submit(f"w{i}", 1) for i in range(50)], tenant="t-s08")
        await wait_until(lambda: count(redis, "workload_accepted", 50), 30, "50 accepted")
        await wait_until(lambda: _settled(redis), 30, "every workload started or queued")
    finally:
        for r in (inventory, *replicas):
            await r.stop()
    events = await sched_events(redis)
    started = {e.workload_id for e in events if e.event_type.endswith("workload_started")}
    quota_waits = {e.workload_id for e in events if e.event_type.endswith("workload_queued") and e.code == "quota"}
    conflicts = sum(r.stats["conflicts"] for r in replicas)
    print(f"S08 run {run}: {len(started)} placed, {len(quota_waits)} waiting on quota, {conflicts} conflicts retried")
    assert len(started) == 5
    assert len(quota_waits) == 45
    await redis.aclose()


async def _settled(redis: Redis) -> bool:
    events = await sched_events(redis)
    started = {e.workload_id for e in events if e.event_type.endswith("workload_started")}
    waiting = {e.workload_id for e in events if e.event_type.endswith("workload_queued")}
    return len(started | waiting) >= 50


async def test_no_gpu_is_ever_in_two_allocations_with_two_replicas(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    inventory = rt("inventory", redis_url)
    replicas = [rt("scheduling", redis_url, batch_size=8), rt("scheduling", redis_url, batch_size=8)]
    for r in (inventory, *replicas):
        await r.start()
    rng = random.Random(5)
    try:
        await send(redis, *[host(i, rack=i // 4, domain=i // 2) for i in range(12)], tenant=None)
        await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 12), 10, "12 hosts")
        names = []
        for i in range(80):
            gpus, nodes = rng.choice([(1, 1), (2, 1), (4, 1), (8, 1), (8, 2)])
            names.append(f"w{i}")
            await send(redis, submit(f"w{i}", gpus, nodes), tenant=f"t-{i % 3}")
            if i % 4 == 3:
                victim = rng.choice(names)
                await send(redis, CompleteWorkload(workload_id=victim), tenant=f"t-{int(victim[1:]) % 3}")
        await wait_until(lambda: count(redis, "workload_accepted", 80), 30, "80 accepted")
        await wait_until(lambda: _quiet(redis), 30, "the schedulers to settle")
    finally:
        for r in (inventory, *replicas):
            await r.stop()
    held: dict[tuple[str, int], str] = {}
    placed = 0
    trace: list[str] = []  # replay the stream: a GPU is held by one allocation at a time
    for e in await sched_events(redis):
        if not e.event_type.endswith(("allocation_placed", "allocation_released")):
            continue
        trace.append(
            f"{e.event_type.rsplit('.', 1)[1]} {e.allocation_id} {e.workload_id} "
            f"{[(s.host_id, s.gpu_indices) for s in e.gpus]}"
        )
        for s in e.gpus:
            for g in s.gpu_indices:
                if e.event_type.endswith("allocation_placed"):
                    history = "\n".join(t for t in trace if f"'{s.host_id}'" in t)
                    assert (s.host_id, g) not in held, f"GPU {s.host_id}/{g} in two allocations:\n{history}"
                    held[(s.host_id, g)] = e.allocation_id
                else:
                    assert held.pop((s.host_id, g)) == e.allocation_id
        placed += e.event_type.endswith("allocation_placed")
    print(f"80 submissions, 20 completions, 2 replicas: {placed} placements, none sharing a GPU")
    assert placed >= 20
    await redis.aclose()


_last: dict[str, int] = {}


async def _quiet(redis: Redis) -> bool:
    n = int(await redis.xlen(SCHEDULING_EVENTS))
    pending = sum(
        int(g["pending"]) + int(g.get("lag") or 0) for g in await redis.xinfo_groups("mc.scheduling.commands")
    )
    settled = pending == 0 and _last.get("n") == n
    _last["n"] = n
    return settled


async def test_maximum_duration_stops_the_workload_at_the_exact_instant(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    # 120x time: the 60 s maximum passes in half a second; ticks every 5 clock seconds.
    sched = rt("scheduling", redis_url, clock="accelerated:120", tick_s=5)
    await sched.start()
    try:
        await one_host(redis)
        await send(redis, submit("short", 2, max_duration_s=60))
        await wait_until(lambda: count(redis, "workload_ended", 1), 10, "the deadline")
    finally:
        await sched.stop()
    events = await sched_events(redis)
    placed = next(e for e in events if e.event_type.endswith("allocation_placed"))
    released = next(e for e in events if e.event_type.endswith("allocation_released"))
    ended = next(e for e in events if e.event_type.endswith("workload_ended"))
    assert released.reason == "max_duration"
    assert (released.released_at - placed.started_at).total_seconds() == 60  # exactly, not at the tick
    assert (ended.outcome, ended.reason) == ("completed", "reached its maximum duration of 60 s")
    await redis.aclose()


async def test_spot_work_gets_notice_then_makes_room_for_on_demand(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    sched = rt("scheduling", redis_url, clock="accelerated:120", tick_s=5)
    await sched.start()
    try:
        await one_host(redis)
        await send(redis, submit("spot", 8, price_class="spot"), tenant="t-cheap")
        await wait_until(lambda: count(redis, "workload_started", 1), 10, "the spot work to start")
        await send(redis, submit("spot2", 8, price_class="spot"), tenant="t-cheap")  # spot never preempts spot
        await send(redis, submit("urgent", 8, price_class="on_demand"), tenant="t-rich")
        await wait_until(lambda: count(redis, "workload_started", 2), 10, "the on-demand work to start")
    finally:
        await sched.stop()
    events = await sched_events(redis)
    notices = [e for e in events if e.event_type.endswith("spot_notice")]
    assert [n.workload_id for n in notices] == ["spot"]
    notice = notices[0]
    assert (notice.stop_at - notice.notice_at).total_seconds() == 30
    released = next(e for e in events if e.event_type.endswith("allocation_released"))
    assert (released.workload_id, released.reason) == ("spot", "preempted")
    assert released.released_at == notice.stop_at  # stopped at the end of the notice, exactly
    waits = {(e.workload_id, e.code) for e in events if e.event_type.endswith("workload_queued")}
    assert ("urgent", "preempting") in waits
    assert ("spot", "preempted") in waits
    assert ("spot2", "capacity") in waits
    started = [e.workload_id for e in events if e.event_type.endswith("workload_started")]
    assert started == ["spot", "urgent"]
    await redis.aclose()


async def test_largest_gang_query_reflects_placements(cloud: tuple[Redis, list[ServiceRuntime]]) -> None:
    from minicloud_scheduling.queries import largest_gangs

    redis, _ = cloud
    await send(redis, *[host(i, rack=0, domain=i // 2) for i in range(4)], tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 4), 10, "4 hosts")
    await wait_until(lambda: _gang(redis, 32), 10, "the hosts in scheduling's view")
    await send(redis, submit("a", 3))
    await wait_until(lambda: count(redis, "workload_started", 1), 10, "a start")
    (row,) = await largest_gangs(redis)
    assert (row["free_gpus"], row["largest_gang_gpus"], row["as"]) == (29, 24, "3 x 8 GPUs")
    assert row["nodes_by_gpus_per_node"][5] == 4  # 5 GPUs on every host: the busy one has 5 left


async def one_host(redis: Redis) -> None:
    """Inventory's fact of one 8-GPU host, published directly (no inventory service)."""
    await host_facts(redis, 1)


async def _gang(redis: Redis, gpus: int) -> bool:
    from minicloud_scheduling.queries import largest_gangs

    rows = await largest_gangs(redis)
    return bool(rows) and rows[0]["largest_gang_gpus"] == gpus


async def test_a_replica_behind_a_trimmed_host_log_reloads_instead_of_missing_capacity(redis_url: str) -> None:
    from minicloud_scheduling.fleetcache import FleetCache

    redis = Redis.from_url(redis_url)
    behind = FleetCache()
    sched = create_runtime(
        "scheduling",
        lambda r: build_scheduling(r, behind),
        Settings(service="scheduling", redis_url=redis_url, block_ms=50, log_level="WARNING"),
    )
    other = rt("scheduling", redis_url)
    await sched.start()
    try:
        await host_facts(redis, 1, 2, domain=None)
        await send(redis, submit("full", 8))  # 'behind' fills one host and sees it full
        await wait_until(lambda: count(redis, "workload_started", 1), 10, "the first placement")
        await sched.stop()
        # While 'behind' is away, another replica frees that host and then changes the
        # other one; the log is trimmed so that only the last change is left.
        await other.start()
        await send(redis, CompleteWorkload(workload_id="full"))
        await wait_until(lambda: count(redis, "workload_ended", 1), 10, "completion")
        await send(redis, submit("small", 2))
        await wait_until(lambda: count(redis, "workload_started", 2), 10, "the other replica's placement")
        await other.stop()
        await redis.xtrim("mc.scheduling.hostlog", maxlen=1, approximate=False)
        await sched.start()
        await send(redis, submit("after", 7))  # fits only on the host freed while 'behind' was away
        await wait_until(lambda: count(redis, "workload_started", 3), 10, "'behind' to see the freed GPUs")
    finally:
        await sched.stop()
    await redis.aclose()


async def test_a_tenant_at_its_hard_limit_gets_no_new_work_and_loses_spot_and_dev(
    cloud: tuple[Redis, list[ServiceRuntime]],
) -> None:
    from decimal import Decimal

    from minicloud_shared.contracts.billing import BudgetExceeded, BudgetRestored

    redis, _ = cloud
    await send(redis, host(1), host(2), tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 2), 10, "2 hosts")
    await send(redis, submit("train", 4), submit("spotty", 2, price_class="spot"))
    await send(redis, SubmitWorkload(**{**submit("box", 1).model_dump(), "kind": "dev"}))
    await send(redis, submit("other", 1), tenant="t-2")
    await wait_until(lambda: count(redis, "workload_started", 4), 10, "four workloads running")
    exceeded = BudgetExceeded(
        cause="credit", charged=Decimal("30.01"), limit=Decimal("30"), currency="USD", reason="credit used up"
    )
    await publish(redis, exceeded, producer="billing", tenant_id="t-1")
    await wait_until(lambda: count(redis, "workload_ended", 2), 10, "spot and dev work stopped")
    ended = {e.workload_id: e for e in await sched_events(redis) if e.event_type.endswith("workload_ended")}
    assert set(ended) == {"spotty", "box"}  # on-demand training and the other tenant's work go on
    assert all("budget" in e.reason for e in ended.values())
    released = [e for e in await sched_events(redis) if e.event_type.endswith("allocation_released")]
    assert {e.reason for e in released} == {"budget"}
    await send(redis, submit("more", 1))
    await wait_until(lambda: count(redis, "workload_rejected", 1), 10, "the new submission refused")
    rejected = next(e for e in await sched_events(redis) if e.event_type.endswith("workload_rejected"))
    assert (rejected.workload_id, rejected.code) == ("more", "budget")
    await publish(redis, BudgetRestored(reason="credit added"), producer="billing", tenant_id="t-1")

    async def restored() -> bool:
        # The restore travels on billing's stream, a submission on scheduling's: submit
        # once scheduling has applied the restore (otherwise the two race).
        doc = await redis.hget(budget_key("t-1"), "d")
        return doc is not None and not json.loads(doc)["blocked"]

    await wait_until(restored, 10, "the restore applied")
    await send(redis, submit("again", 1))
    await wait_until(lambda: count(redis, "workload_started", 5), 10, "new work admitted again")


async def test_a_gang_submitted_right_after_its_hosts_is_placed(cloud: tuple[Redis, list[ServiceRuntime]]) -> None:
    """Regression: a batch prepared while the one before it was committing, and prepared
    again because it read what that one wrote, used to keep the first preparation's
    placement in the engine's memory: the gang then waited for capacity that was free."""
    redis, _ = cloud
    await send(redis, host(1, domain=5), host(2, domain=5), tenant=None)
    await send(redis, submit("right-away", 8, nodes=2))
    await wait_until(lambda: count(redis, "workload_started", 1), 10, "the gang to start")


async def test_a_pending_reason_never_names_another_tenants_workload(cloud: tuple[Redis, list[ServiceRuntime]]) -> None:
    redis, _ = cloud
    await send(redis, host(1), tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 1), 10, "a host")
    await send(redis, submit("mine-big", 8), submit("mine-next", 8), tenant="t-1")
    await send(redis, submit("theirs", 8), tenant="t-2")
    await wait_until(lambda: count(redis, "workload_queued", 2), 10, "two waiting")
    reasons = {e.workload_id: e.reason for e in await sched_events(redis) if e.event_type.endswith("workload_queued")}
    assert "mine-" not in reasons.get("theirs", "")
    assert all("theirs" not in r for w, r in reasons.items() if w.startswith("mine"))


async def test_work_waiting_for_one_sku_does_not_hold_back_another(cloud: tuple[Redis, list[ServiceRuntime]]) -> None:
    """Head-of-line blocking is per GPU pool: an H100 job waiting for capacity (a head,
    with a reservation) does not keep an A100 job from starting on a free A100 host.
    Found by the demo: spot A100 jobs waited a day behind an H200 gang with A100s idle."""
    redis, _ = cloud
    a100 = host(2).model_copy(update={"host_id": "a1", "sku": "a100-80gb-sxm", "nvlink_domain": "nvl-a1"})
    await send(redis, host(1), a100, tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 2), 10, "two hosts")
    # The H100 jobs were submitted 30 minutes ago (event time); the second waits.
    earlier = datetime.now(UTC) - timedelta(minutes=30)
    for wid in ("h100-first", "h100-waits"):
        await publish(redis, submit(wid, 8), producer="gateway", tenant_id="t-1", occurred_at=earlier)
    await wait_until(lambda: count(redis, "workload_queued", 1), 10, "the second H100 job to wait")
    await send(redis, submit("a100-job", 4).model_copy(update={"sku": "a100-80gb-sxm"}))
    await wait_until(lambda: count(redis, "workload_started", 2), 10, "the A100 job to start")
    started = {e.workload_id for e in await sched_events(redis) if e.event_type.endswith("workload_started")}
    assert started == {"h100-first", "a100-job"}
    # Within the H100 pool nothing starts past the head (the pool is full).
    await send(redis, submit("h100-small", 4))
    await wait_until(lambda: count(redis, "workload_queued", 2), 10, "the small H100 job to wait")
    queued = [e for e in await sched_events(redis) if e.event_type.endswith("workload_queued")]
    assert queued[-1].workload_id == "h100-small"


async def test_one_tenants_impossible_or_huge_work_never_delays_anothers_placeable_work(
    cloud: tuple[Redis, list[ServiceRuntime]],
) -> None:
    """Issue 10 (2): beta's work the fleet cannot hold (no H100s in ap-1) and its work
    waiting for capacity in us-1 hold back nothing in eu-1; and beta's long queue in
    eu-1 takes turns with acme's work instead of going first with all of it."""
    redis, _ = cloud
    us = host(9).model_copy(update={"host_id": "us9", "region": "us-1", "zone": "us-1a"})
    await send(redis, host(1), us, tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 2), 10, "2 hosts")
    await send(redis, submit("b-us", 8, region="us-1"), tenant="beta")
    await wait_until(lambda: _started(redis, "b-us"), 10, "beta's us-1 job")
    await send(
        redis,
        submit("b-nowhere", 1, region="ap-1"),  # no such capacity: never a head
        submit("b-us-2", 8, region="us-1"),  # waits for us-1: a head there only
        tenant="beta",
    )
    await wait_until(lambda: _queued(redis, "b-us-2"), 10, "beta's second us-1 job to wait")
    await send(redis, submit("a-eu", 1, region="eu-1"), tenant="acme")
    await wait_until(lambda: _started(redis, "a-eu"), 10, "acme's eu-1 job, past beta's waiting work")
    await send(redis, CompleteWorkload(workload_id="a-eu"), tenant="acme")
    # Fair share: beta fills eu-1 and queues two more; acme's job, submitted after them,
    # is next when eu-1 frees (beta holds 16 GPUs, acme none).
    await send(redis, submit("b-eu-1", 8, region="eu-1"), tenant="beta")
    await wait_until(lambda: _started(redis, "b-eu-1"), 10, "beta's eu-1 job")
    await send(redis, submit("b-eu-2", 8, region="eu-1"), submit("b-eu-3", 8, region="eu-1"), tenant="beta")
    await wait_until(lambda: _queued(redis, "b-eu-3"), 10, "beta's queue in eu-1")
    await send(redis, submit("a-eu-2", 8, region="eu-1"), tenant="acme")
    await wait_until(lambda: _queued(redis, "a-eu-2"), 10, "acme's job to wait")
    await send(redis, CompleteWorkload(workload_id="b-eu-1"), tenant="beta")
    await wait_until(lambda: _started(redis, "a-eu-2"), 10, "acme's job, before beta's second")
    assert not await _started(redis, "b-eu-2")


async def _started(redis: Redis, wid: str) -> bool:
    return any(e.event_type.endswith("workload_started") and e.workload_id == wid for e in await sched_events(redis))


async def _queued(redis: Redis, wid: str) -> bool:
    return any(e.event_type.endswith("workload_queued") and e.workload_id == wid for e in await sched_events(redis))


async def test_at_its_hard_budget_a_tenant_loses_all_its_running_work(
    cloud: tuple[Redis, list[ServiceRuntime]],
) -> None:
    """Issue 10 (11): "hard" means hard. At the hard budget every running workload of
    the tenant stops (on-demand training too), released with reason budget (no minimum
    is charged for it); another tenant's work goes on."""
    from decimal import Decimal

    from minicloud_shared.contracts.billing import BudgetExceeded

    redis, _ = cloud
    await send(redis, host(1), tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 1), 10, "a host")
    await send(redis, submit("train", 4), submit("spotty", 2, price_class="spot"))
    await send(redis, submit("other", 1), tenant="t-2")
    await wait_until(lambda: count(redis, "workload_started", 3), 10, "three workloads running")
    exceeded = BudgetExceeded(
        cause="hard_budget", charged=Decimal("100.01"), limit=Decimal("100"), currency="USD", reason="hard budget"
    )
    await publish(redis, exceeded, producer="billing", tenant_id="t-1")
    await wait_until(lambda: count(redis, "workload_ended", 2), 10, "the tenant's work stopped")
    ended = {e.workload_id: e for e in await sched_events(redis) if e.event_type.endswith("workload_ended")}
    assert set(ended) == {"train", "spotty"}
    released = [e for e in await sched_events(redis) if e.event_type.endswith("allocation_released")]
    assert {e.reason for e in released} == {"budget"}
    assert not await _ended(redis, "other")


async def _ended(redis: Redis, wid: str) -> bool:
    return any(e.event_type.endswith("workload_ended") and e.workload_id == wid for e in await sched_events(redis))


async def test_metrics_show_the_queue_its_waits_free_gpus_and_gpus_by_state(
    cloud: tuple[Redis, list[ServiceRuntime]],
) -> None:
    """Scheduling's and inventory's own figures on their ``/metrics``: who waits and
    why, free GPUs, submit-to-placed, placements counted once as events, and the
    fleet's GPUs by state."""
    from tests.support.harness import scrape

    redis, (inventory, scheduling) = cloud

    await send(redis, host(1), tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 1), 10, "a host")
    await send(redis, submit("first", 6), submit("second", 4))
    await wait_until(lambda: count(redis, "workload_queued", 1), 10, "the second to queue")
    await wait_until(lambda: _allocated(redis, 6), 10, "inventory to count 6 busy GPUs")

    sched = await scrape(scheduling)
    h100 = "h100-80gb-sxm"
    assert sched[("minicloud_scheduling_waiting", (("reason", "capacity"), ("sku", h100)))] == 1
    assert sched[("minicloud_scheduling_free_gpus", (("sku", h100),))] == 2
    assert sched[("minicloud_scheduling_waiting_with_free_gpus", (("sku", h100),))] == 0  # 4 needed, 2 free
    assert sched[("minicloud_scheduling_oldest_wait_seconds", (("sku", h100),))] >= 0
    assert sched[("minicloud_scheduling_queue_depth", ())] == 1
    assert sched[("minicloud_scheduling_submit_to_placed_seconds_count", ())] == 1
    placed = ("minicloud_runtime_events_emitted_total", (("type", "minicloud.scheduling.allocation_placed"),))
    assert sched[placed] == 1
    inv = await scrape(inventory)
    labels = (("region", "eu-1"), ("sku", h100))
    assert inv[("minicloud_inventory_gpus", (*labels[:1], labels[1], ("state", "allocated")))] == 6
    assert inv[("minicloud_inventory_gpus", (*labels[:1], labels[1], ("state", "free")))] == 2
    assert inv[("minicloud_inventory_hosts", labels)] == 1
    assert inv[("minicloud_inventory_hosts_by_state", (*labels, ("state", "active")))] == 1
    assert inv[("minicloud_inventory_hosts_by_state", (*labels, ("state", "draining")))] == 0

    await send(redis, CompleteWorkload(workload_id="first"))
    await wait_until(lambda: count(redis, "workload_started", 2), 10, "the second to start")
    await wait_until(lambda: _waiting_gone(scheduling), 10, "the queue's figures to clear")
    sched = await scrape(scheduling)
    assert sched[placed] == 2
    assert sched[("minicloud_scheduling_submit_to_placed_seconds_count", ())] == 2
    # Hosts by state follow a drain.
    await send(redis, DrainHost(host_id="h1", reason="maintenance"), tenant=None)

    async def drained() -> bool:
        figures = await scrape(inventory)
        return figures[("minicloud_inventory_hosts_by_state", (*labels, ("state", "draining")))] == 1

    await wait_until(drained, 10, "the host counted as draining")
    inv = await scrape(inventory)
    assert inv[("minicloud_inventory_hosts_by_state", (*labels, ("state", "active")))] == 0


async def _waiting_gone(runtime: ServiceRuntime) -> bool:
    return b'minicloud_scheduling_waiting{reason="capacity"' not in await runtime.metrics_text()


async def test_work_behind_a_head_runs_only_if_it_cannot_delay_the_heads_reservation(
    cloud: tuple[Redis, list[ServiceRuntime]],
) -> None:
    """Backfill by reservation through the service: the running work's maximum duration
    (kept in the running index) dates the head's reservation; work that ends before it
    starts now, work that would outlast it on the head's GPUs waits and says until when."""
    redis, _ = cloud
    await send(redis, host(1), tenant=None)
    await wait_until(lambda: _len(redis, INVENTORY_EVENTS, 1), 10, "a host")
    await send(redis, submit("running", 4, max_duration_s=7200))
    await wait_until(lambda: count(redis, "workload_started", 1), 10, "the first job to start")
    await send(redis, submit("head", 8))
    await wait_until(lambda: count(redis, "workload_queued", 1), 10, "the head to wait")
    await send(redis, submit("short", 2, max_duration_s=3600), submit("long", 2, max_duration_s=3 * 3600))
    await wait_until(lambda: count(redis, "workload_queued", 2), 10, "the long one to wait")
    await wait_until(lambda: count(redis, "workload_started", 2), 10, "the short one to start")
    events = await sched_events(redis)
    started = {e.workload_id for e in events if e.event_type.endswith("workload_started")}
    assert started == {"running", "short"}
    held = [e for e in events if e.event_type.endswith("workload_queued") and e.workload_id == "long"][-1]
    assert held.code == "priority"
    assert held.reason.startswith("waiting behind head, queued before it: running now would delay its start, due")
    running = await redis.hgetall("mc:scheduling:running")
    assert sorted(k.decode() for k in running) == ["running", "short"]
