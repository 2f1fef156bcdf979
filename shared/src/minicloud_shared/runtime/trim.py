"""Trimming that never removes an entry some group has not acknowledged.

A blind ``MAXLEN`` (FastStream's ``maxlen=``) deletes unread and pending entries: lost
messages. Here a stream is trimmed with ``MINID`` at the lowest of, over all its
groups, the oldest pending entry or the entry after the last delivered one — and never
above the retention floor (entries younger than ``retention_s`` are kept for audit and
replay). Computing the bound and trimming happen in one script, so a group that reads
or claims meanwhile cannot be overtaken.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis

from minicloud_shared.contracts.envelope import text

_TRIM_LUA = resources.files("minicloud_shared.runtime").joinpath("trim.lua").read_text()


@dataclass(frozen=True, slots=True)
class TrimResult:
    stream: str
    trimmed: int
    min_id: str


async def safe_trim(redis: Redis, stream: str, *, retention_s: int) -> TrimResult:
    """Trim ``stream`` below what every group acknowledged and below ``retention_s`` ago.

    Age is measured on Redis's own clock, the one its entry ids come from (a service's
    clock may be simulated).
    """
    secs, micros = await redis.time()
    floor_ms = max(0, int(secs) * 1000 + int(micros) // 1000 - retention_s * 1000)
    trimmed, min_id = await redis.eval(_TRIM_LUA, 1, stream, f"{floor_ms}-0")
    return TrimResult(stream, int(trimmed), text(min_id))
