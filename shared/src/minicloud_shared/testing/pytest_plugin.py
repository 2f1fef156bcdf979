"""pytest fixtures for a real Redis (loaded by the ``pytest11`` entry point).

``redis_server`` (session): one real Redis for the whole run. ``redis_url`` (per
test): its URL, after ``FLUSHALL`` so every test starts from an empty Redis. Without
any Redis the tests that need one are skipped with the reason on a laptop, and fail
under ``CI=true``: a CI run that skipped its broker tests would prove nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from minicloud_shared.testing.redis_server import NoRedis, RedisServer, acquire


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = acquire()
    except NoRedis as exc:
        message = f"no real Redis for broker tests: {exc}"
        if _in_ci():
            pytest.fail(message + " (CI=true: broker tests must not be skipped)", pytrace=False)
        pytest.skip(message + " — install Docker or redis-server, or set REDIS_URL")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        client.script_flush()
    finally:
        client.close()
    return redis_server.url


def pytest_report_header(config: pytest.Config) -> list[str]:
    mode = os.environ.get("MINICLOUD_TEST_REDIS", "auto")
    where = "REDIS_URL" if os.environ.get("REDIS_URL") else mode
    return [f"minicloud: real Redis from {where}; CI={'true' if _in_ci() else 'false'}"]
