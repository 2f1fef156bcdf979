"""A test service on the real runtime, and bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from minicloud_shared.clock import SystemClock
from minicloud_shared.contracts import Message, encode, envelope_for
from minicloud_shared.runtime import Failpoints, ServiceRuntime, Transaction
from minicloud_shared.settings import Settings
from tests.support.events import TEST_STREAM, Tick, Tock

SERVICE = "testsvc"
EFFECTS = "mc:testsvc:effects"  # hash: n -> times the effect was applied


def account_key(account: str) -> str:
    return f"mc:testsvc:account:{account}"


async def handle_tick(msg: Message[Tick], tx: Transaction) -> None:
    tick = msg.payload
    if tick.sleep_s:
        await asyncio.sleep(tick.sleep_s)
    if tick.fail:
        raise ValueError(f"tick {tick.n} is poisonous")
    account = await tx.get(account_key(tick.account)) or {"total": 0, "count": 0}
    await tx.put(account_key(tick.account), {"total": account["total"] + tick.n, "count": account["count"] + 1})
    tx.incr(EFFECTS, str(tick.n), 1)
    tx.emit(Tock(n=tick.n))


def make_runtime(
    redis_url: str,
    *,
    failpoints: str | None = None,
    handler: Callable[[Message[Tick], Transaction], Awaitable[None]] = handle_tick,
    **overrides: Any,
) -> ServiceRuntime:
    settings = Settings(
        service=SERVICE,
        redis_url=redis_url,
        **{
            "reclaim_idle_ms": 1000,
            "reclaim_poll_ms": 50,
            "block_ms": 100,
            "health_interval_s": 0.2,
            "max_deliveries": 3,
            **overrides,
        },
    )
    runtime = ServiceRuntime(SERVICE, settings, failpoints=Failpoints(failpoints))
    runtime.add_route(Tick, handler)
    return runtime


async def publish_ticks(redis: Redis, ns: range | list[int], **fields: Any) -> list[str]:
    ids = []
    pipe = redis.pipeline(transaction=False)
    for n in ns:
        env = envelope_for(Tick(n=n, **fields), producer="test", occurred_at=SystemClock().now())
        pipe.xadd(TEST_STREAM, encode(env, Tick(n=n, **fields)))
        ids.append(env.event_id)
    await pipe.execute()
    return ids


async def wait_until(
    condition: Callable[[], Awaitable[bool]], within_s: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``condition`` until true; fail with ``what`` after ``within_s`` seconds."""
    start = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > within_s:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(interval)


async def effects(redis: Redis) -> dict[int, int]:
    raw = await redis.hgetall(EFFECTS)
    return {int(k): int(v) for k, v in raw.items()}


async def pending_count(redis: Redis, group: str = SERVICE) -> int:
    info = await redis.xpending(TEST_STREAM, group)
    return int(info["pending"])


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(exposition: str | bytes) -> Samples:
    """A Prometheus text exposition as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(runtime: ServiceRuntime) -> Samples:
    """What the runtime's ``GET /metrics`` would answer now."""
    return samples(await runtime.metrics_text())
