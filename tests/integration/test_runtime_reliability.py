"""Rows of RELIABILITY.md for the consumer runtime, against a real Redis.

Each test injects its fault, drains with a bounded wait, and asserts the exact
effect counts: every event's effect applied exactly once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio import Redis

from minicloud_shared.contracts import Message, encode, envelope_for
from minicloud_shared.contracts.topology import dead_letter_stream
from minicloud_shared.runtime import Transaction
from tests.support.events import TEST_STREAM, Tick
from tests.support.harness import (
    SERVICE,
    account_key,
    effects,
    handle_tick,
    make_runtime,
    pending_count,
    publish_ticks,
    wait_until,
)

pytestmark = pytest.mark.broker
DLQ = dead_letter_stream(TEST_STREAM, SERVICE)


async def drained(redis: Redis, n: int) -> bool:
    return len(await effects(redis)) >= n and await pending_count(redis) == 0


@pytest.mark.parametrize("batch_size", [1, 50])
async def test_crash_after_effect_before_ack_is_absorbed_by_dedup_r02(redis_url: str, batch_size: int) -> None:
    redis = Redis.from_url(redis_url)
    rate = 0.01 if batch_size == 1 else 0.2  # about 1% of messages either way
    runtime = make_runtime(redis_url, failpoints=f"after_commit_before_ack={rate},seed=2", batch_size=batch_size)
    await runtime.start()
    try:
        await publish_ticks(redis, range(2000))
        await wait_until(lambda: drained(redis, 2000), 60, "2,000 effects and no pending")
    finally:
        await runtime.stop()
    injected = runtime.stats["left_unacked_by_failpoint"]
    print(f"R02 batch={batch_size}: injected={injected} dedup hits={runtime.stats['duplicates']}")
    assert injected > 0, "the fault was never injected: the test proves nothing"
    assert runtime.stats["duplicates"] == injected
    assert await effects(redis) == dict.fromkeys(range(2000), 1)
    await redis.aclose()


async def test_crash_before_effect_loses_nothing_r03(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    runtime = make_runtime(redis_url, failpoints="before_commit=0.01,seed=3", batch_size=1)
    await runtime.start()
    try:
        await publish_ticks(redis, range(2000))
        await wait_until(lambda: drained(redis, 2000), 60, "2,000 effects and no pending")
    finally:
        await runtime.stop()
    crashes = runtime.failpoints.hits["before_commit"]
    print(f"R03: crashes={crashes} reclaimed={runtime.stats['reclaimed']}")
    assert crashes > 0
    assert runtime.stats["reclaimed"] >= crashes
    assert await effects(redis) == dict.fromkeys(range(2000), 1)
    await redis.aclose()


async def _strand_100(redis: Redis) -> None:
    """A consumer reads 100 entries and dies without handling them."""
    await publish_ticks(redis, range(100))
    from minicloud_shared.runtime import provision
    from tests.support.harness import make_runtime as _mk

    await provision(redis, [s.spec for s in _mk("redis://unused").subscriptions])
    await redis.xreadgroup(SERVICE, "dead-consumer", {TEST_STREAM: ">"}, count=100)
    assert await pending_count(redis) == 100


async def test_restarted_consumer_pending_entries_are_reclaimed_r05(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await _strand_100(redis)
    runtime = make_runtime(redis_url)  # the restarted process: a new consumer name
    await runtime.start()
    try:
        took = await wait_until(lambda: drained(redis, 100), 20, "the 100 stranded entries")
    finally:
        await runtime.stop()
    print(f"R05: 100 stranded entries reclaimed in {took:.1f}s (idle time 1 s)")
    assert await effects(redis) == dict.fromkeys(range(100), 1)
    await redis.aclose()


async def test_without_reclaimer_pending_entries_stay_stranded_r05_characterisation(redis_url: str) -> None:
    """FastStream's worker subscriber alone never redelivers another consumer's pending
    entries. If this starts failing, FastStream changed: revisit the reclaimer."""
    redis = Redis.from_url(redis_url)
    await _strand_100(redis)
    seen: list[Any] = []
    broker = RedisBroker(redis_url)

    @broker.subscriber(
        stream=StreamSub(TEST_STREAM, group=SERVICE, consumer="fresh", max_records=100, polling_interval=100),
        ack_policy=AckPolicy.ACK,
    )
    async def plain(body: Any) -> None:
        seen.append(body)

    await broker.start()
    await asyncio.sleep(2.0)  # twice the reclaim idle time of the runtime tests
    await broker.stop()
    assert seen == []
    assert await pending_count(redis) == 100
    await redis.aclose()


async def test_poison_goes_to_dead_letter_and_the_rest_proceeds_r07(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    attempts: dict[int, int] = {}

    async def counting(msg: Message[Tick], tx: Transaction) -> None:
        attempts[msg.payload.n] = attempts.get(msg.payload.n, 0) + 1
        await handle_tick(msg, tx)

    runtime = make_runtime(redis_url, handler=counting, max_deliveries=3)
    await runtime.start()
    poison = {999, 1999, 2999}  # 1 in 1,000 makes the handler raise
    try:
        for start in range(0, 3000, 500):
            for n in range(start, start + 500):
                await publish_ticks(redis, [n], fail=n in poison)
        # Entries that can never be decoded or validated: dead-lettered at once.
        await redis.xadd(TEST_STREAM, {"hello": "world"})
        bad = envelope_for(Tick(n=1), producer="test", occurred_at=runtime.clock.now())
        fields = encode(bad, Tick(n=1)) | {"data": '{"n": -5}'}
        await redis.xadd(TEST_STREAM, fields)
        await wait_until(lambda: _dlq_len(redis, 5), 30, "5 dead letters")
        await wait_until(lambda: drained(redis, 2997), 30, "the rest handled")
    finally:
        await runtime.stop()
    good = await effects(redis)
    assert good == {n: 1 for n in range(3000) if n not in poison}
    dead = await redis.xrange(DLQ)
    kinds = sorted(f[b"dlq_kind"].decode() for _, f in dead)
    assert kinds == ["failed", "failed", "failed", "poison", "poison"]
    for _, f in dead:
        if f[b"dlq_kind"] == b"failed":
            assert f[b"dlq_delivery_count"] == b"3"
            assert b"poisonous" in f[b"dlq_reason"]
            assert f[b"type"] == b"minicloud.test.tick"  # the original fields are kept for replay
        else:
            assert f[b"dlq_delivery_count"] == b"1"
    # No hot loop: each poison message was tried exactly max_deliveries times.
    assert {n: attempts[n] for n in poison} == dict.fromkeys(poison, 3)
    assert runtime.stats["dead_lettered"] == 5
    await redis.aclose()


async def _dlq_len(redis: Redis, n: int) -> bool:
    return int(await redis.xlen(DLQ)) >= n


async def test_slow_but_healthy_handlers_are_neither_dead_lettered_nor_applied_twice_r08(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    runtime = make_runtime(redis_url, reclaim_idle_ms=1000, max_deliveries=2, batch_size=20)
    await runtime.start()
    slow = {50, 150, 250}
    try:
        for n in range(300):
            await publish_ticks(redis, [n], sleep_s=1.5 if n in slow else 0.0)  # 1.5x the idle time
        await wait_until(lambda: drained(redis, 300), 60, "300 effects")
    finally:
        await runtime.stop()
    print(
        f"R08: reclaimed={runtime.stats['reclaimed']} duplicates={runtime.stats['duplicates']} "
        f"conflicts={runtime.stats['conflicts']}"
    )
    assert runtime.stats["reclaimed"] > 0, "the slow handlers were never overtaken: the test proves nothing"
    assert int(await redis.xlen(DLQ)) == 0
    assert await effects(redis) == dict.fromkeys(range(300), 1)
    await redis.aclose()


async def test_redelivered_copy_is_deduplicated_by_event_id_r12_r15(redis_url: str) -> None:
    """The same event written twice (a producer retrying after a lost reply) is two
    stream entries with different entry ids and FastStream message ids: only the
    event id says they are one event."""
    redis = Redis.from_url(redis_url)
    runtime = make_runtime(redis_url)
    env = envelope_for(Tick(n=42), producer="test", occurred_at=runtime.clock.now())
    first = await redis.xadd(TEST_STREAM, encode(env, Tick(n=42)))
    second = await redis.xadd(TEST_STREAM, encode(env, Tick(n=42)))
    assert first != second
    await runtime.start()
    try:
        await wait_until(lambda: drained(redis, 1), 10, "the event")
        await wait_until(lambda: _stat(runtime, "duplicates", 1), 10, "the duplicate")
    finally:
        await runtime.stop()
    assert await effects(redis) == {42: 1}
    await redis.aclose()


async def _stat(runtime: Any, name: str, n: int) -> bool:
    return bool(runtime.stats[name] >= n)


async def test_lost_groups_make_the_service_not_ready_and_are_not_recreated_r24(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    runtime = make_runtime(redis_url)
    await runtime.start()
    try:
        await publish_ticks(redis, range(10))
        await wait_until(lambda: drained(redis, 10), 10, "10 effects")
        assert runtime.health.ready
        await redis.flushdb()  # Redis restarted empty (this test's database)
        took = await wait_until(lambda: _not_ready(runtime), 10, "not-ready")
        print(f"R24: not ready {took:.2f}s after Redis lost its state; reasons={runtime.health.reasons}")
        await asyncio.sleep(1.0)  # give a wrongly eager subscriber time to recreate
        assert await redis.exists(TEST_STREAM) == 0, "a group was recreated (the stream exists again)"
        assert runtime.health.fatal
        assert not runtime.health.ready
    finally:
        await runtime.stop()
    await redis.aclose()


async def _not_ready(runtime: Any) -> bool:
    return not runtime.health.ready


async def test_hot_aggregates_overlap_their_commits_and_stay_exact_with_two_replicas(redis_url: str) -> None:
    """Every batch updates the same two accounts: each replica prepares its next batch
    on top of the one it is committing (``Transaction.inherit``) while the other
    replica's commits keep refusing some of them. A batch built on a refused one must
    never be sent: the account totals would lose or double updates (the other replica
    writes the very version numbers it expects)."""
    redis = Redis.from_url(redis_url)
    replicas = [make_runtime(redis_url, consumer_name=f"r{i}", batch_size=50) for i in range(2)]
    for r in replicas:
        await r.start()
    n = 6000
    try:
        for start in range(0, n, 500):
            for account in ("a", "b"):
                half = [i for i in range(start, start + 500) if (i % 2 == 0) == (account == "a")]
                await publish_ticks(redis, half, account=account)
        await wait_until(lambda: drained(redis, n), 120, f"{n} ticks on two hot accounts")
    finally:
        for r in replicas:
            await r.stop()
    assert await effects(redis) == dict.fromkeys(range(n), 1)
    for account, ns in (("a", range(0, n, 2)), ("b", range(1, n, 2))):
        doc = json.loads(await redis.hget(account_key(account), "d"))
        assert doc == {"total": sum(ns), "count": len(ns)}
    chained = sum(r.stats["pipeline_chained"] for r in replicas)
    refused = sum(r.stats["conflicts"] + r.stats["pipeline_reprepared"] for r in replicas)
    print(f"hot accounts, 2 replicas: {chained} batches chained, {refused} refused or prepared again")
    assert chained > 0
    await redis.aclose()
