"""Service-level scenarios in process, on the in-memory substrate (fakeredis, with the
runtime's Lua scripts): no Redis server, no sleeps. The same scenarios run on a real
Redis in ``tests/integration/test_substrates_redis.py``."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from minicloud_shared.testing.memory import Cloud, memory
from tests.support.scenarios import SERVICES, a_jobs_life


async def test_a_jobs_life_in_memory() -> None:
    cloud = await Cloud(memory(), SERVICES).start()
    started = time.perf_counter()
    try:
        with capture_logs():  # whatever logging a test before configured
            await a_jobs_life(cloud)
    finally:
        await cloud.stop()
    print(f"a job's life in memory: {(time.perf_counter() - started) * 1000:.0f} ms")
