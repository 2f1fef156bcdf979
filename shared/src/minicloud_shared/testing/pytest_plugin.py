"""pytest fixtures for a real Redis (loaded by the ``pytest11`` entry point).

``redis_server`` (session): one real Redis for the whole run. ``redis_url`` (per
test): its URL with a database of its own (1 to 15 in turn, emptied with ``FLUSHDB``),
so every test starts from an empty Redis and no test flushes another's data (tests
can share one Redis; database 0 is left to the benchmarks and the stack). Without
any Redis the tests that need one are skipped with the reason on a laptop, and fail
under ``CI=true``: a CI run that skipped its broker tests would prove nothing.
"""

from __future__ import annotations

import itertools
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


_DATABASES = itertools.cycle(range(1, 16))


def with_database(url: str, db: int) -> str:
    """``url`` (``redis://host:port/N``) on database ``db``."""
    base, _, last = url.rstrip("/").rpartition("/")
    return f"{base}/{db}" if last.isdigit() else f"{url.rstrip('/')}/{db}"


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    url = with_database(redis_server.url, next(_DATABASES))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        client.script_flush()  # scripts are server-wide: every test loads what it runs
    finally:
        client.close()
    return url


def pytest_report_header(config: pytest.Config) -> list[str]:
    mode = os.environ.get("MINICLOUD_TEST_REDIS", "auto")
    where = "REDIS_URL" if os.environ.get("REDIS_URL") else mode
    return [f"minicloud: real Redis from {where}; CI={'true' if _in_ci() else 'false'}"]
