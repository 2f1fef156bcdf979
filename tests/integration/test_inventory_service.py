"""The inventory service on the real runtime and a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from minicloud_inventory.app import build
from minicloud_inventory.capacity import read_summary
from minicloud_inventory.store import host_key
from minicloud_shared.contracts import Payload, decode
from minicloud_shared.contracts.inventory import (
    DecommissionHost,
    DrainHost,
    RegisterHost,
    ReportGpuFault,
    UndrainHost,
)
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased, GpuSlice
from minicloud_shared.contracts.topology import INVENTORY_COMMANDS, INVENTORY_EVENTS, dead_letter_stream
from minicloud_shared.runtime import ServiceRuntime, publish
from minicloud_shared.runtime.entrypoint import create_runtime
from minicloud_shared.settings import Settings
from tests.support.harness import wait_until

pytestmark = pytest.mark.broker


def runtime(redis_url: str, **kw: Any) -> ServiceRuntime:
    settings = Settings(
        service="inventory", redis_url=redis_url, reclaim_idle_ms=1000, block_ms=100, log_format="console", **kw
    )
    return create_runtime("inventory", build, settings)


def register(host_id: str, sku: str = "h100-80gb-sxm", region: str = "eu-1", gpus: int = 8) -> RegisterHost:
    return RegisterHost(
        host_id=host_id, region=region, zone=f"{region}a", rack="r01", nvlink_domain="nvl0", sku=sku, gpu_count=gpus
    )


async def send(redis: Redis, *commands: Payload) -> None:
    for c in commands:
        await publish(redis, c, producer="operator")


async def events(redis: Redis) -> list[Any]:
    return [decode(f) for _, f in await redis.xrange(INVENTORY_EVENTS)]


async def count_events(redis: Redis, n: int) -> bool:
    return int(await redis.xlen(INVENTORY_EVENTS)) >= n


async def test_lifecycle_refusals_and_capacity(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    rt = runtime(redis_url)
    await rt.start()
    try:
        await send(redis, register("h1"), register("h2"), register("l1", sku="l40s-48gb-pcie", region="us-1", gpus=4))
        await send(redis, register("h1"))  # duplicate
        await send(redis, register("x1", sku="tpu-v5"))  # unknown SKU
        await send(redis, DrainHost(host_id="nope", reason="x"))  # unknown host
        await send(redis, ReportGpuFault(host_id="h1", gpu_index=3, code="xid-79"))
        await send(redis, DrainHost(host_id="h2", reason="firmware"))
        await wait_until(lambda: count_events(redis, 8), 10, "8 inventory events")
        await publish(
            redis,
            AllocationPlaced(
                allocation_id="a-1",
                workload_id="w-1",
                sku="h100-80gb-sxm",
                region="eu-1",
                price_class="on_demand",
                gpus=[GpuSlice(host_id="h1", gpu_indices=[0, 1])],
                gpu_count=2,
                started_at=rt.clock.now(),
            ),
            producer="scheduling",
            tenant_id="t-1",
        )
        # Facts from another stream are not ordered with commands: wait until inventory
        # has seen the allocation before asking to decommission the busy host.
        await wait_until(lambda: _allocated(redis, 2), 10, "the allocation to be counted")
        await send(redis, DecommissionHost(host_id="h1"))  # busy: refused
        await wait_until(lambda: count_events(redis, 9), 10, "the busy refusal")
        summary = await read_summary(redis)
    finally:
        await rt.stop()

    types = [(m.payload.event_type.rsplit(".", 1)[1], getattr(m.payload, "code", "")) for m in await events(redis)]
    assert types == [
        ("host_registered", ""),
        ("host_registered", ""),
        ("host_registered", ""),
        ("command_rejected", "duplicate_host"),
        ("command_rejected", "unknown_sku"),
        ("command_rejected", "unknown_host"),
        ("gpu_faulted", "xid-79"),
        ("host_drained", ""),
        ("command_rejected", "host_busy"),
    ]
    rows = {(r.sku, r.region): r for r in summary.rows}
    h100 = rows[("h100-80gb-sxm", "eu-1")]
    assert (h100.hosts, h100.total, h100.free, h100.allocated, h100.faulted, h100.draining) == (2, 16, 5, 2, 1, 8)
    l40s = rows[("l40s-48gb-pcie", "us-1")]
    assert (l40s.total, l40s.free) == (4, 4)
    # 15 H100 in service x 989 TFLOPS + 4 L40S x 362 = 16.283 PFLOPS
    assert str(summary.fleet.bf16_pflops) == "16.283"
    assert summary.fleet.total == 20
    await redis.aclose()


async def test_generations_rise_by_one_per_change_and_facts_carry_them(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    rt = runtime(redis_url)
    await rt.start()
    try:
        await send(redis, register("h1"), DrainHost(host_id="h1", reason="a"), UndrainHost(host_id="h1"))
        await wait_until(lambda: count_events(redis, 3), 10, "3 events")
    finally:
        await rt.stop()
    assert [m.payload.generation for m in await events(redis)] == [1, 2, 3]
    assert int(await redis.hget(host_key("h1"), "v")) == 3
    await redis.aclose()


async def test_two_replicas_racing_on_one_host_lose_no_change(redis_url: str) -> None:
    """Concurrent changes are detected by the host's generation and retried, not lost."""
    redis = Redis.from_url(redis_url)
    await send(redis, register("h1", gpus=72))
    replicas = [runtime(redis_url, batch_size=5), runtime(redis_url, batch_size=5)]
    for r in replicas:
        await r.start()
    try:
        await send(redis, *[ReportGpuFault(host_id="h1", gpu_index=i, code=f"xid-{i}") for i in range(72)])
        await wait_until(lambda: count_events(redis, 73), 30, "72 faults")
    finally:
        for r in replicas:
            await r.stop()
    faults = [m.payload for m in await events(redis) if m.payload.event_type.endswith("gpu_faulted")]
    assert sorted(f.gpu_index for f in faults) == list(range(72))
    assert sorted(f.generation for f in faults) == list(range(2, 74))  # each change saw the one before
    summary = await read_summary(redis)
    assert summary.fleet.faulted == 72
    assert summary.fleet.free == 0
    conflicts = sum(r.stats["conflicts"] for r in replicas)
    print(f"two replicas, 72 changes to one host: {conflicts} optimistic conflicts retried")
    await redis.aclose()


async def test_invalid_command_is_dead_lettered_with_the_reason(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    rt = runtime(redis_url)
    await rt.start()
    try:
        c = register("h1")
        from minicloud_shared.contracts import encode, envelope_for

        fields = encode(envelope_for(c, producer="operator", occurred_at=rt.clock.now()), c)
        fields["data"] = fields["data"].replace('"gpu_count":8', '"gpu_count":0')
        await redis.xadd(INVENTORY_COMMANDS, fields)
        dlq = dead_letter_stream(INVENTORY_COMMANDS, "inventory")
        await wait_until(lambda: _has(redis, dlq), 10, "the dead letter")
    finally:
        await rt.stop()
    ((_, dead),) = await redis.xrange(dlq)
    assert b"gpu_count" in dead[b"dlq_reason"]
    assert await redis.xlen(INVENTORY_EVENTS) == 0
    await redis.aclose()


async def _allocated(redis: Redis, n: int) -> bool:
    return (await read_summary(redis)).fleet.allocated == n


async def _released(redis: Redis) -> bool:
    summary = await read_summary(redis)
    return summary.fleet.allocated == 0 and summary.fleet.free == 8


async def _has(redis: Redis, stream: str) -> bool:
    return int(await redis.xlen(stream)) > 0


async def test_release_frees_and_decommission_then_succeeds(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    rt = runtime(redis_url)
    await rt.start()
    try:
        await send(redis, register("h1"))
        await wait_until(lambda: count_events(redis, 1), 10, "registered")  # streams are not ordered together
        slices = [GpuSlice(host_id="h1", gpu_indices=[0, 1, 2])]
        await publish(
            redis,
            AllocationPlaced(
                allocation_id="a-1",
                workload_id="w",
                sku="h100-80gb-sxm",
                region="eu-1",
                price_class="spot",
                gpus=slices,
                gpu_count=3,
                started_at=rt.clock.now(),
            ),
            producer="scheduling",
        )
        await wait_until(lambda: _allocated(redis, 3), 10, "the allocation to be counted")
        await publish(
            redis,
            AllocationReleased(
                allocation_id="a-1", workload_id="w", reason="completed", gpus=slices, released_at=rt.clock.now()
            ),
            producer="scheduling",
        )
        await wait_until(lambda: _released(redis), 10, "the release to be counted")
        await send(redis, DecommissionHost(host_id="h1"))
        await wait_until(lambda: count_events(redis, 2), 10, "decommissioned")
        summary = await read_summary(redis)
    finally:
        await rt.stop()
    assert [m.payload.event_type for m in await events(redis)][-1] == "minicloud.inventory.host_decommissioned"
    assert summary.fleet.total == 0
    assert summary.fleet.hosts == 0
    await redis.aclose()
