"""The runtime against a real Redis: the happy path, provisioning and wire format."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from minicloud_shared.contracts import decode
from tests.support.events import TEST_OUT_STREAM, TEST_STREAM
from tests.support.harness import account_key, effects, make_runtime, pending_count, publish_ticks, wait_until

pytestmark = pytest.mark.broker


async def test_each_event_applied_once_and_its_event_emitted(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    runtime = make_runtime(redis_url)
    await runtime.start()
    try:
        await publish_ticks(redis, range(500))
        await wait_until(lambda: _count(redis, 500), 20, "500 effects")
    finally:
        await runtime.stop()
    assert await effects(redis) == dict.fromkeys(range(500), 1)
    account = await redis.hgetall(account_key("a"))
    assert int(account[b"v"]) == 500  # one version per applied event
    assert await pending_count(redis) == 0
    out = await redis.xrange(TEST_OUT_STREAM)
    assert sorted(decode(fields).payload.n for _, fields in out) == list(range(500))  # type: ignore[attr-defined]
    await redis.aclose()


async def _count(redis: Redis, n: int) -> bool:
    return len(await effects(redis)) >= n and await pending_count(redis) == 0


async def test_events_published_before_first_start_are_all_handled_r14(redis_url: str) -> None:
    """R14: groups are provisioned at id 0, so nothing published early is skipped.

    Here the stream exists (a producer wrote 1,000 events) before the consuming
    service ever started: FastStream alone would create the group at ``$``.
    """
    redis = Redis.from_url(redis_url)
    await publish_ticks(redis, range(1000))
    runtime = make_runtime(redis_url)
    await runtime.start()
    try:
        await wait_until(lambda: _count(redis, 1000), 30, "1,000 effects")
    finally:
        await runtime.stop()
    assert await effects(redis) == dict.fromkeys(range(1000), 1)
    await redis.aclose()


async def test_wire_format_is_plain_fields(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await publish_ticks(redis, [7])
    ((_, fields),) = await redis.xrange(TEST_STREAM)
    names = {k.decode() for k in fields}
    assert {"specversion", "id", "type", "source", "time", "data", "schemaversion", "correlationid"} <= names
    assert b"__data__" not in fields
    assert fields[b"type"] == b"minicloud.test.tick"
    await redis.aclose()


async def test_a_runtime_started_again_after_stop_retries_redis_outages_again(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    runtime = make_runtime(redis_url)
    await runtime.start()
    await runtime.stop()
    assert runtime.committer.stopping  # a stopping runtime gives up on an outage: the batch stays pending
    await runtime.start()
    try:
        assert not runtime.committer.stopping
        await publish_ticks(redis, range(20))
        await wait_until(lambda: _count(redis, 20), 20, "20 effects after the restart")
    finally:
        await runtime.stop()
    assert await effects(redis) == dict.fromkeys(range(20), 1)
    await redis.aclose()


async def test_commit_script_clears_a_mark_only_if_its_guards_are_unchanged(redis_url: str) -> None:
    """``srem_unchanged``: the mark goes when every guard is at the version read, and
    stays when any of them moved on (a change that found the mark already set)."""
    from importlib import resources

    from minicloud_shared.runtime.plan import CommitPlan

    redis = Redis.from_url(redis_url)
    script = redis.register_script(resources.files("minicloud_shared.runtime").joinpath("commit.lua").read_text())
    await redis.sadd("mc:t:dirty", "x", "y")
    await redis.hset("mc:t:inv:x", mapping={"v": "3", "d": "{}"})
    await redis.hset("mc:t:inv:y", mapping={"v": "5", "d": "{}"})  # changed since it was read at 4

    writes = [
        ["srem_unchanged", "mc:t:dirty", "x", "mc:t:inv:x", "3", "mc:t:absent", "0"],
        ["srem_unchanged", "mc:t:dirty", "y", "mc:t:inv:y", "4", "mc:t:absent", "0"],
    ]
    plan = CommitPlan("mc.t.s", "g", [], "mc:t:seen:", [], [], 60, [], writes, [], [])
    assert set(plan.declared_keys()) == {"mc:t:dirty", "mc:t:inv:x", "mc:t:inv:y", "mc:t:absent"}
    reply = await script(keys=plan.declared_keys(), args=[plan.to_json()])
    assert reply[0] == b"ok"
    assert await redis.smembers("mc:t:dirty") == {b"y"}
    await redis.aclose()


async def test_metrics_endpoint_counts_messages_and_reads_lag_pending_and_dead_letters(redis_url: str) -> None:
    """``GET /metrics`` on the health port: what the runtime settled (by outcome), and
    Redis' own figures for its group, in the Prometheus text format."""
    import httpx

    from minicloud_shared.testing.redis_server import free_port
    from tests.support.harness import SERVICE, Samples, samples

    async def scrape(port: int) -> Samples:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return samples(response.text)

    redis = Redis.from_url(redis_url)
    port = free_port()
    runtime = make_runtime(redis_url, health_port=port)
    await runtime.start()
    try:
        labels = (("group", SERVICE), ("stream", TEST_STREAM))
        before = await scrape(port)
        assert before[("minicloud_runtime_messages_total", (*labels[:1], ("outcome", "applied"), labels[1]))] == 0
        await publish_ticks(redis, range(50))
        await redis.xadd(TEST_STREAM, {"junk": "not an event"})  # poison: dead-lettered at once
        await wait_until(lambda: _count(redis, 50), 20, "50 effects")
        after = await scrape(port)
    finally:
        await runtime.stop()
    assert after[("minicloud_runtime_messages_total", (*labels[:1], ("outcome", "applied"), labels[1]))] == 50
    assert after[("minicloud_runtime_messages_total", (*labels[:1], ("outcome", "dead_lettered"), labels[1]))] == 1
    assert after[("minicloud_stream_lag", labels)] == 0
    assert after[("minicloud_stream_pending", labels)] == 0
    assert after[("minicloud_stream_dead_letters", labels)] == 1
    assert after[("minicloud_ready", ())] == 1
    assert after[("minicloud_runtime_commits_total", labels)] >= 1
    assert after[("minicloud_runtime_batch_size_count", labels)] >= 1
    assert after[("minicloud_runtime_commit_seconds_count", labels)] >= 1
    assert not any("tenant" in name or any(k == "tenant" for k, _ in lbl) for name, lbl in after)
    await redis.aclose()
