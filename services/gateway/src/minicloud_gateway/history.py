"""The fleet's capacity over time (``GET /v1/capacity/history``, the console's
utilization chart): a sample of ``/v1/capacity``'s totals every ``every_s`` seconds in
a capped stream, ``mc:gateway:capacity``, about a week of them at one a minute.

Each sample's entry id is the start of its interval on the cloud's clock, so gateway
replicas sampling the same interval write it once: Redis refuses an id that is not
greater than the stream's last, and the second writer's sample is dropped."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from minicloud_gateway.routes.hosts import capacity_view, hosts_of
from minicloud_gateway.store import PREFIX
from minicloud_shared.clock import Clock
from minicloud_shared.contracts import text

HISTORY = PREFIX + "capacity"
KEEP = 10_080  # samples kept (a week at one a minute)
log = structlog.get_logger(service="gateway")


def sample(capacity: dict[str, Any]) -> dict[str, str]:
    """The stream fields of one sample of ``capacity_view``'s answer."""
    fleet = capacity["fleet"]
    skus: dict[str, dict[str, int]] = {}
    for row in capacity["items"]:
        s = skus.setdefault(row["sku"], {"total": 0, "allocated": 0})
        s["total"] += row["total"]
        s["allocated"] += row["allocated"]
    fields = {k: str(fleet[k]) for k in ("total", "allocated", "free", "faulted")}
    return {**fields, "skus": json.dumps(skus, sort_keys=True)}


async def record(redis: Redis, clock: Clock, every_s: float, capacity: dict[str, Any]) -> bool:
    """Write the sample of the interval ``clock`` is in; False if it was written already."""
    interval_ms = max(1, int(every_s * 1000))
    start = int(clock.now().timestamp() * 1000) // interval_ms * interval_ms
    try:
        await redis.xadd(HISTORY, sample(capacity), id=f"{start}-0", maxlen=KEEP, approximate=True)  # type: ignore[arg-type]
    except ResponseError:
        return False  # another replica (or an earlier call) wrote this interval
    return True


async def read(redis: Redis, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` samples, oldest first."""
    rows: Any = await redis.xrevrange(HISTORY, count=limit)
    out = []
    for entry_id, raw in reversed(rows):
        f = {text(k): text(v) for k, v in raw.items()}
        ms = int(text(entry_id).split("-")[0])
        total, allocated = int(f["total"]), int(f["allocated"])
        out.append(
            {
                "at": datetime.fromtimestamp(ms / 1000, UTC).isoformat(),
                "total": total,
                "allocated": allocated,
                "free": int(f["free"]),
                "faulted": int(f["faulted"]),
                "utilization": round(allocated / total, 4) if total else 0.0,
                "skus": json.loads(f["skus"]),
            }
        )
    return out


async def sample_forever(redis: Redis, clock: Clock, every_s: float) -> None:
    """Sample the fleet every ``every_s`` seconds until cancelled; a Redis error is
    logged and the next interval tried."""
    while True:
        try:
            await record(redis, clock, every_s, capacity_view(await hosts_of(redis)))
        except RedisError as exc:
            log.warning("capacity sample failed", error=str(exc))
        await asyncio.sleep(every_s)
