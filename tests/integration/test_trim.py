"""R17: trimming never removes an entry some group has not acknowledged."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from minicloud_shared.contracts.topology import GroupSpec
from minicloud_shared.runtime import provision, safe_trim
from tests.support.events import TEST_STREAM
from tests.support.harness import SERVICE, effects, make_runtime, pending_count, publish_ticks, wait_until

pytestmark = pytest.mark.broker
OTHER = "auditor"  # a second group on the same stream, slower than the service


async def _setup(redis: Redis) -> None:
    await provision(redis, [GroupSpec(TEST_STREAM, SERVICE), GroupSpec(TEST_STREAM, OTHER)])
    await publish_ticks(redis, range(1000))
    # The service's group has read and acknowledged the first 500.
    read = await redis.xreadgroup(SERVICE, "svc-1", {TEST_STREAM: ">"}, count=500)
    ids = [eid for eid, _ in read[0][1]]
    await redis.xack(TEST_STREAM, SERVICE, *ids)
    # The auditor read 300 and acknowledged only 250: 50 pending.
    read = await redis.xreadgroup(OTHER, "aud-1", {TEST_STREAM: ">"}, count=300)
    ids = [eid for eid, _ in read[0][1]]
    await redis.xack(TEST_STREAM, OTHER, *ids[:250])


async def test_safe_trim_keeps_every_unacknowledged_entry_r17(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await _setup(redis)
    all_ids = [eid for eid, _ in await redis.xrange(TEST_STREAM)]
    result = await safe_trim(redis, TEST_STREAM, retention_s=0)
    # The auditor's oldest pending entry (the 251st) bounds the trim.
    assert result.trimmed == 250
    assert result.min_id == all_ids[250].decode()
    kept = [eid for eid, _ in await redis.xrange(TEST_STREAM)]
    assert kept == all_ids[250:]
    # Consumers resume: every unacknowledged entry is still there to be handled.
    runtime = make_runtime(redis_url)
    await runtime.start()
    try:
        await wait_until(lambda: _done(redis), 30, "the service's 500 unread entries")
    finally:
        await runtime.stop()
    assert await effects(redis) == dict.fromkeys(range(500, 1000), 1)
    await redis.aclose()


async def _done(redis: Redis) -> bool:
    return len(await effects(redis)) >= 500 and await pending_count(redis) == 0


async def test_safe_trim_respects_retention_and_groupless_streams(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await _setup(redis)
    result = await safe_trim(redis, TEST_STREAM, retention_s=3600)  # everything is younger than an hour
    assert result.trimmed == 0
    await redis.xadd("mc.testsvc.nogroups", {"a": "b"})
    result = await safe_trim(redis, "mc.testsvc.nogroups", retention_s=0)
    assert (result.trimmed, result.min_id) == (0, "")
    assert await redis.xlen("mc.testsvc.nogroups") == 1
    await redis.aclose()


async def test_blind_maxlen_deletes_unacknowledged_entries_r17_characterisation(redis_url: str) -> None:
    """What FastStream's ``maxlen=`` (XADD MAXLEN / XTRIM MAXLEN) does: it ignores
    consumer groups. If this ever stops losing entries, Redis changed (8.2 has
    ACKED trimming) and our trimming can be revisited."""
    redis = Redis.from_url(redis_url)
    await _setup(redis)
    pending_before = await redis.xpending_range(TEST_STREAM, OTHER, min="-", max="+", count=100)
    await redis.xtrim(TEST_STREAM, maxlen=100, approximate=False)
    remaining = {eid for eid, _ in await redis.xrange(TEST_STREAM)}
    unread_by_service_lost = 500 - len(remaining)  # the service had 500 unread
    pending_lost = [p for p in pending_before if p["message_id"] not in remaining]
    assert unread_by_service_lost == 400
    assert len(pending_lost) == 50
    await redis.aclose()
