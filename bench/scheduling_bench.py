"""scheduling.e2e_placements_per_s and its submit-to-placed p99, through the runtime.

One scheduling process on one Redis, a fleet of 1,000 hosts x 8 GPUs learnt from
inventory's facts. Throughput: 2,000 single-GPU submissions written at once, timed
until the 2,000th WorkloadStarted. Latency: 1,000 submissions paced at 100/s; each
one's latency is the distance between its command's and its WorkloadStarted's entry
ids (both stamped by Redis's clock), p50 and p99 reported.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable
from typing import Any

import structlog
from redis.asyncio import Redis

from bench.common import Result, until
from minicloud_scheduling.app import build
from minicloud_shared.clock import SystemClock
from minicloud_shared.contracts import encode, envelope_for
from minicloud_shared.contracts.inventory import HostRegistered
from minicloud_shared.contracts.scheduling import SubmitWorkload
from minicloud_shared.contracts.topology import SCHEDULING_EVENTS
from minicloud_shared.runtime.entrypoint import create_runtime
from minicloud_shared.settings import Settings

STARTED = b"minicloud.scheduling.workload_started"


def _submit(i: int, prefix: str) -> SubmitWorkload:
    return SubmitWorkload(
        workload_id=f"{prefix}{i}",
        name="bench",
        kind="inference",
        sku="h100-80gb-sxm",
        gpus_per_node=1,
        client_command_id=f"{prefix}{i}",
    )


async def _write(redis: Redis, payloads: list[Any], tenant: str | None, producer: str) -> list[bytes]:
    clock = SystemClock()
    pipe = redis.pipeline(transaction=False)
    for p in payloads:
        pipe.xadd(p.stream, encode(envelope_for(p, producer=producer, occurred_at=clock.now(), tenant_id=tenant), p))
    return list(await pipe.execute())


async def _at_least(value: Awaitable[int], n: int) -> bool:
    return await value >= n


class _Started:
    """WorkloadStarted entries seen so far: workload id -> entry-id milliseconds. Read
    incrementally from the last entry seen (a full XRANGE every poll parsed the whole
    stream in the benchmark's process, beside the scheduler it measures, and took half
    of the CPU: the old figures were low by that much)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.last = "-"
        self.seen: dict[str, int] = {}

    async def poll(self) -> dict[str, int]:
        while True:
            after = self.last if self.last == "-" else f"({self.last}"  # exclusive: not the last one again
            rows = await self.redis.xrange(SCHEDULING_EVENTS, min=after, count=2000)
            if not rows:
                return self.seen
            for eid, fields in rows:
                if fields[b"type"] == STARTED:
                    wid = fields[b"data"].split(b'"workload_id":"')[1].split(b'"')[0].decode()
                    self.seen[wid] = int(eid.split(b"-")[0])
            self.last = rows[-1][0].decode()

    async def at_least(self, n: int) -> bool:
        return len(await self.poll()) >= n


async def _scheduler(url: str) -> tuple[Redis, Any]:
    """One scheduling runtime, started, knowing a fleet of 1,000 hosts x 8 GPUs."""
    redis = Redis.from_url(url)
    await redis.flushall()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    runtime = create_runtime(
        "scheduling",
        build,
        Settings(service="scheduling", redis_url=url, log_level="ERROR", log_format="json", block_ms=50),
    )
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    await runtime.start()
    hosts = [
        HostRegistered(
            host_id=f"h{i}",
            region="eu-1",
            zone=f"z{i // 200}",
            rack=f"r{i // 8}",
            nvlink_domain=f"n{i // 2}",
            sku="h100-80gb-sxm",
            gpu_ids=[f"h{i}/gpu{g}" for g in range(8)],
            generation=1,
        )
        for i in range(1000)
    ]
    await _write(redis, hosts, None, "inventory")
    await until(lambda: _at_least(redis.scard("mc:scheduling:hosts"), 1000), 60, "1,000 hosts")
    return redis, runtime


async def _throughput(redis: Redis, n: int, started: _Started) -> float:
    t0 = time.perf_counter()
    await _write(redis, [_submit(i, "t") for i in range(n)], "t-bench", "gateway")
    await until(lambda: started.at_least(n), 120, f"{n} placements")
    return n / (time.perf_counter() - t0)


async def throughput_only(url: str, n: int) -> float:
    """The throughput half alone (for the profiler)."""
    redis, runtime = await _scheduler(url)
    try:
        rate = await _throughput(redis, n, _Started(redis))
        print(f"  {n} submissions placed at {rate:,.0f}/s")
        return rate
    finally:
        await runtime.stop()
        await redis.aclose()


async def run(url: str, **_: object) -> list[Result]:
    redis, runtime = await _scheduler(url)
    try:
        # Throughput.
        n = 2000
        watch = _Started(redis)
        rate = await _throughput(redis, n, watch)
        print(f"  {n} submissions placed at {rate:,.0f}/s")

        # Latency at 100 submissions/s.
        sent: dict[str, int] = {}
        for i in range(1000):
            tick = time.perf_counter()
            (eid,) = await _write(redis, [_submit(i, "l")], "t-bench", "gateway")
            sent[f"l{i}"] = int(eid.split(b"-")[0])
            await asyncio.sleep(max(0.0, 0.01 - (time.perf_counter() - tick)))
        await until(lambda: watch.at_least(n + len(sent)), 60, "the paced placements")
        started = await watch.poll()
        latencies = sorted(started[w] - ms for w, ms in sent.items())
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(f"  at 100/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms submit-to-placed")
    finally:
        await runtime.stop()
        await redis.aclose()
    return [
        Result(
            "scheduling.e2e_placements_per_s",
            round(rate, 1),
            "placements/s",
            note="commands on the stream to WorkloadStarted, 1,000 hosts x 8 GPUs, one replica; goal >= 300/s",
        ),
        Result(
            "scheduling.e2e_submit_to_placed_p99_ms",
            float(p99),
            "ms",
            note=f"at 100 submissions/s; p50 {p50:.0f} ms; goal p99 < 100 ms",
        ),
    ]
