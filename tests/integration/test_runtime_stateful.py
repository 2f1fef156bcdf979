"""P01 for the runtime: a hypothesis state machine over a real Redis.

Two consumers publish, read, crash (before the commit, or after it but before the
XACK), reclaim each other's pending entries, producers retry with the same event id,
and the stream is trimmed — in any order hypothesis finds. The invariant, checked
after every step: no event's effect was ever applied twice. After draining: every
event's effect applied exactly once, nothing dead-lettered, nothing pending.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from redis.asyncio import Redis

from minicloud_shared.contracts import encode, envelope_for
from minicloud_shared.contracts.topology import dead_letter_stream
from minicloud_shared.runtime import Entry, provision, safe_trim
from minicloud_shared.testing.memory import memory
from tests.support.events import TEST_STREAM, Tick
from tests.support.harness import EFFECTS, SERVICE, make_runtime

pytestmark = [pytest.mark.broker, pytest.mark.slow]
CONSUMERS = ("c1", "c2")
CRASHES = (None, "before_commit", "after_commit_before_ack")


class RuntimeMachine(RuleBasedStateMachine):
    def __init__(self, redis_url: str | None) -> None:
        """On the Redis at ``redis_url``, or (None) on the in-memory substrate."""
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = Redis.from_url(redis_url) if redis_url else memory()
        self.run(self.redis.flushdb())
        self.runtime = make_runtime(redis_url or "redis://in-process", max_deliveries=10_000)
        self.run(self.runtime.connect(self.redis))
        self.sub = self.runtime.subscriptions[0]
        self.run(provision(self.redis, [self.sub.spec]))
        self.events: dict[str, tuple[int, dict[str, str]]] = {}
        self.next_n = 0
        self.held: dict[str, list[Entry]] = {c: [] for c in CONSUMERS}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @rule(k=st.integers(1, 6))
    def publish(self, k: int) -> None:
        for _ in range(k):
            tick = Tick(n=self.next_n)
            env = envelope_for(tick, producer="test", occurred_at=self.runtime.clock.now())
            fields = encode(env, tick)
            self.events[env.event_id] = (self.next_n, fields)
            self.next_n += 1
            self.run(self.redis.xadd(TEST_STREAM, fields))

    @precondition(lambda self: bool(self.events))
    @rule(data=st.data())
    def producer_retries(self, data: st.DataObject) -> None:
        event_id = data.draw(st.sampled_from(sorted(self.events)))
        self.run(self.redis.xadd(TEST_STREAM, self.events[event_id][1]))

    @rule(consumer=st.sampled_from(CONSUMERS), count=st.integers(1, 8))
    def read(self, consumer: str, count: int) -> None:
        reply = self.run(self.redis.xreadgroup(SERVICE, consumer, {TEST_STREAM: ">"}, count=count))
        for _, entries in reply:
            self.held[consumer].extend(Entry(eid.decode(), fields, 1) for eid, fields in entries)

    @rule(consumer=st.sampled_from(CONSUMERS), crash=st.sampled_from(CRASHES))
    def process(self, consumer: str, crash: str | None) -> None:
        if crash:
            self.runtime.failpoints.arm(crash)
        entries, self.held[consumer] = self.held[consumer], []
        self.run(self.runtime.process(self.sub, entries))
        if crash:  # an armed point that did not fire (no entries) must not leak into later steps
            self.runtime.failpoints._armed.clear()

    @rule(consumer=st.sampled_from(CONSUMERS))
    def reclaim(self, consumer: str) -> None:
        self.held[consumer].extend(self.run(self._claim(consumer)))

    async def _claim(self, consumer: str) -> list[Entry]:
        _, claimed, _ = await self.redis.xautoclaim(TEST_STREAM, SERVICE, consumer, 0, "0-0", count=8)
        out = []
        for eid, fields in claimed:
            rows = await self.redis.xpending_range(TEST_STREAM, SERVICE, min=eid, max=eid, count=1)
            out.append(Entry(eid.decode(), fields, int(rows[0]["times_delivered"]) if rows else 1))
        return out

    @rule()
    def trim(self) -> None:
        self.run(safe_trim(self.redis, TEST_STREAM, retention_s=0))

    @invariant()
    def no_effect_twice(self) -> None:
        counts = self.run(self.redis.hgetall(EFFECTS))
        twice = {k: v for k, v in counts.items() if int(v) > 1}
        assert not twice, f"effects applied more than once: {twice}"

    def teardown(self) -> None:
        try:
            for _ in range(200):
                self.held = {c: [] for c in CONSUMERS}
                self.read("c1", 50)
                self.held["c1"].extend(self.run(self._claim("c1")))
                if not self.held["c1"]:
                    break
                self.process("c1", None)
            counts = {int(k): int(v) for k, v in self.run(self.redis.hgetall(EFFECTS)).items()}
            expected = {n: 1 for n, _ in self.events.values()}
            assert counts == expected, f"after draining: {len(counts)} effects for {len(expected)} events"
            assert self.run(self.redis.xpending(TEST_STREAM, SERVICE))["pending"] == 0
            assert self.run(self.redis.xlen(dead_letter_stream(TEST_STREAM, SERVICE))) == 0
        finally:
            self.run(self.redis.aclose())
            self.loop.close()


def test_runtime_state_machine_p01(redis_url: str) -> None:
    run_state_machine_as_test(
        lambda: RuntimeMachine(redis_url),
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
