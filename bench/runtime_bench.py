"""runtime.exactly_once_events_per_s against raw.xreadgroup_xack_events_per_s.

Both drain the same kind of backlog (minicloud wire-format entries, about 400 bytes)
from the same Redis in the same run. The baseline is the least a consumer group can
do: XREADGROUP COUNT 100, then one XACK of those ids, nothing else. The runtime does
everything it promises: decode and validate each entry, a dedup pre-check, the
handler (one counter increment), and the atomic commit script per batch (pending
check, dedup marks, writes, XACK) — through FastStream's subscriber.
"""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import Field
from redis.asyncio import Redis

from bench.common import Result, median, until, with_ratio
from minicloud_shared.clock import SystemClock
from minicloud_shared.contracts import Message, Payload, encode, envelope_for, register
from minicloud_shared.runtime import ServiceRuntime, Transaction, provision
from minicloud_shared.settings import Settings

STREAM = "mc.bench.events"
SERVICE = "bench"


@register
class BenchEvent(Payload):
    """A usage-sized event for the benchmarks."""

    event_type: ClassVar[str] = "minicloud.bench.event"
    stream: ClassVar[str] = STREAM

    n: int = Field(description="Sequence number", examples=[1])
    allocation_id: str = Field(description="Some id", examples=["alloc-1"])
    gpu_seconds: int = Field(description="Some quantity", examples=[60])


async def preload(redis: Redis, stream: str, n: int) -> None:
    clock = SystemClock()
    for start in range(0, n, 1000):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            payload = BenchEvent(n=i, allocation_id=f"alloc-{i % 997}", gpu_seconds=60)
            env = envelope_for(payload, producer="bench", occurred_at=clock.now(), tenant_id=f"t-{i % 50}")
            pipe.xadd(stream, encode(env, payload))
        await pipe.execute()


async def raw_baseline(url: str, n: int) -> float:
    redis = Redis.from_url(url)
    await redis.flushall()
    await preload(redis, STREAM, n)
    await redis.xgroup_create(STREAM, "raw", id="0")
    done = 0
    t0 = time.perf_counter()
    while done < n:
        reply = await redis.xreadgroup("raw", "raw-1", {STREAM: ">"}, count=100)
        if not reply:
            continue
        ids = [eid for eid, _ in reply[0][1]]
        acked = await redis.xack(STREAM, "raw", *ids)
        done += int(acked)
    elapsed = time.perf_counter() - t0
    await redis.aclose()
    return n / elapsed


async def _drained(redis: Redis) -> bool:
    info = (await redis.xinfo_groups(STREAM))[0]
    return bool(info["pending"] == 0 and info["lag"] == 0)


async def runtime_drain(url: str, n: int, batch_size: int = 100) -> float:
    redis = Redis.from_url(url)
    await redis.flushall()
    await preload(redis, STREAM, n)
    settings = Settings(service=SERVICE, redis_url=url, batch_size=batch_size, block_ms=50, reclaim_idle_ms=60_000)
    runtime = ServiceRuntime(SERVICE, settings)

    async def count(msg: Message[BenchEvent], tx: Transaction) -> None:
        tx.incr("mc:bench:usage", msg.envelope.tenant_id or "-", msg.payload.gpu_seconds)

    runtime.add_route(BenchEvent, count)
    await provision(redis, [runtime.subscriptions[0].spec])
    t0 = time.perf_counter()
    await runtime.start()
    await until(lambda: _drained(redis), 300, f"{n} events drained")
    elapsed = time.perf_counter() - t0
    await runtime.stop()
    total = sum(int(v) for v in (await redis.hgetall("mc:bench:usage")).values())
    if total != n * 60 or runtime.stats["applied"] != n:
        raise AssertionError(f"runtime benchmark lost or duplicated work: {total} != {n * 60}")
    await redis.aclose()
    return n / elapsed


async def run(url: str, n: int = 50_000, repeats: int = 5, **_: object) -> list[Result]:
    raw_runs: list[float] = []
    rt_runs: list[float] = []
    big_runs: list[float] = []
    for i in range(repeats):  # alternate, so drift on a noisy machine hits all alike
        raw_runs.append(await raw_baseline(url, n))
        rt_runs.append(await runtime_drain(url, n))
        big_runs.append(await runtime_drain(url, n, batch_size=500))
        print(
            f"  run {i + 1}/{repeats}: raw {raw_runs[-1]:,.0f}/s  runtime {rt_runs[-1]:,.0f}/s  "
            f"(batch 500: {big_runs[-1]:,.0f}/s)",
            flush=True,
        )
    baseline = Result(
        "raw.xreadgroup_xack_events_per_s",
        round(median(raw_runs), 1),
        "events/s",
        runs=raw_runs,
        note=f"redis-py (with hiredis) XREADGROUP 100 + one XACK per read, {n} events",
    )
    runtime = with_ratio(
        Result(
            "runtime.exactly_once_events_per_s",
            round(median(rt_runs), 1),
            "events/s",
            runs=rt_runs,
            note=f"full runtime, batch 100 (the default), atomic commit per batch, {n} events; goal ratio >= 0.5",
        ),
        baseline,
    )
    big = with_ratio(
        Result(
            "runtime.exactly_once_events_per_s@batch500",
            round(median(big_runs), 1),
            "events/s",
            runs=big_runs,
            note="the same with batches of 500, as hot paths (usage, rating) will run",
        ),
        baseline,
    )
    return [baseline, runtime, big]
