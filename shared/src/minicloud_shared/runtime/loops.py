"""The runtime's periodic work: ticks (time-driven work as ordinary messages), and
trimming the streams and logs the service owns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import structlog
from redis.asyncio import Redis

from minicloud_shared.clock import Clock
from minicloud_shared.contracts.envelope import Payload, derived_event_id
from minicloud_shared.runtime.publishing import publish
from minicloud_shared.runtime.routing import TRANSIENT_ERRORS
from minicloud_shared.runtime.trim import safe_trim

RedisOf = Callable[[], Redis]


async def tick_loop(
    redis: RedisOf, clock: Clock, service: str, interval: float, make: Callable[[datetime], Payload]
) -> None:
    """Publish ``make(now)`` every ``interval`` seconds of ``clock``; the tick's event id
    is derived from the service, its type and the interval it falls in, so the ticks of
    several replicas collapse into one."""
    while True:
        await clock.sleep(interval)
        now = clock.now()
        payload = make(now)
        bucket = str(int(now.timestamp() // interval))
        try:
            await publish(
                redis(),
                payload,
                producer=service,
                event_id=derived_event_id(service, "tick", payload.event_type, bucket),
                occurred_at=now,
            )
        except TRANSIENT_ERRORS:
            continue  # the next tick will do


async def log_trim_loop(redis: RedisOf, logs: dict[str, int]) -> None:
    """Trim groupless log streams by age alone (``logs``: stream -> seconds kept)."""
    while True:
        for stream, keep_s in logs.items():
            try:
                secs, _ = await redis().time()
                await redis().xtrim(stream, minid=f"{(int(secs) - keep_s) * 1000}-0", approximate=True)
            except TRANSIENT_ERRORS:
                pass
        await asyncio.sleep(60)


async def trim_loop(
    redis: RedisOf, streams: list[str], interval_s: float, retention_s: int, log: structlog.stdlib.BoundLogger
) -> None:
    """Trim the streams the service produces past what every group has read."""
    while True:
        await asyncio.sleep(interval_s)
        for stream in streams:
            try:
                result = await safe_trim(redis(), stream, retention_s=retention_s)
            except TRANSIENT_ERRORS:
                continue
            if result.trimmed:
                log.info("trimmed", stream=stream, trimmed=result.trimmed, min_id=result.min_id)
