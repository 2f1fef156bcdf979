"""The in-memory substrate's scenarios (``tests/unit/test_substrates.py``) on a real
Redis: the same steps, the same exact counts."""

from __future__ import annotations

import time

import pytest

from minicloud_shared.testing.memory import Cloud, real
from tests.support.scenarios import SERVICES, a_jobs_life

pytestmark = pytest.mark.broker


async def test_a_jobs_life_on_redis(redis_url: str) -> None:
    cloud = await Cloud(real(redis_url), SERVICES).start()
    started = time.perf_counter()
    try:
        await a_jobs_life(cloud)
    finally:
        await cloud.stop()
    print(f"a job's life on Redis: {(time.perf_counter() - started) * 1000:.0f} ms")
