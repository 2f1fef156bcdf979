"""The runtime's batch step without Redis: the commit plan a batch builds, and how each
reply of the commit script is settled (fake replies)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from minicloud_shared.clock import SystemClock
from minicloud_shared.contracts import Message, encode, envelope_for
from minicloud_shared.runtime import CommitError, Entry, Refused, ServiceRuntime, Transaction
from minicloud_shared.runtime.batch import Batch, Prepared
from minicloud_shared.settings import Settings
from tests.support.events import TEST_STREAM, Tick, Tock

SERVICE = "testsvc"


async def emit_tock(msg: Message[Tick], tx: Transaction) -> None:
    if msg.payload.fail:
        raise Refused(f"tick {msg.payload.n} must never take effect")
    tx.incr("mc:testsvc:effects", str(msg.payload.n), 1)
    tx.emit(Tock(n=msg.payload.n))


def runtime() -> ServiceRuntime:
    rt = ServiceRuntime(SERVICE, Settings(service=SERVICE, redis_url="redis://unused"))
    rt.add_route(Tick, emit_tock)
    rt.committer.redis = object()  # type: ignore[assignment]  # the handlers above never read
    return rt


def entry(entry_id: str, n: int, **kw: Any) -> Entry:
    payload = Tick(n=n, **kw)
    env = envelope_for(payload, producer="test", occurred_at=SystemClock().now(), event_id=f"ev-{n}")
    return Entry(entry_id, {k.encode(): v.encode() for k, v in encode(env, payload).items()})


def prepare(rt: ServiceRuntime, *entries: Entry) -> tuple[Batch, Prepared]:
    batch = rt.committer.batch(rt.subscriptions[0], entries)
    with capture_logs():  # whatever logging a test before configured
        prepared = asyncio.run(rt.committer.prepare(batch))
    assert isinstance(prepared, Prepared)
    return batch, prepared


def test_the_plan_names_what_to_check_write_append_and_acknowledge() -> None:
    rt = runtime()
    poison = Entry("1-3", {b"type": Tick.event_type.encode(), b"data": b"{not json"})
    _, prepared = prepare(rt, entry("1-2", 2), entry("1-1", 1), poison, entry("1-4", 4, fail=True))
    plan = prepared.plan
    assert (plan.stream, plan.group) == (TEST_STREAM, SERVICE)
    assert plan.pending == ["1-1", "1-2", "1-3", "1-4"]  # sorted by entry order
    assert plan.dedup == ["ev-2", "ev-1"]
    assert plan.dedup_entries == ["1-2", "1-1"]
    assert plan.dedup_prefix == "mc:testsvc:seen:"
    assert [w[:3] for w in plan.writes] == [
        ["hincrby", "mc:testsvc:effects", "2"],
        ["hincrby", "mc:testsvc:effects", "1"],
    ]
    streams = [a[0] for a in plan.appends]
    assert streams == [Tock.stream, Tock.stream, f"{TEST_STREAM}.dlq.{SERVICE}", f"{TEST_STREAM}.dlq.{SERVICE}"]
    kinds = [dict(zip(a[1][::2], a[1][1::2], strict=True)).get("dlq_kind", "") for a in plan.appends[2:]]
    assert sorted(kinds) == ["poison", "refused"]
    assert TEST_STREAM not in plan.declared_keys()  # the source stream is never a declared key
    assert set(plan.declared_keys()) == {"mc:testsvc:effects", Tock.stream, f"{TEST_STREAM}.dlq.{SERVICE}"}
    assert json.loads(plan.to_json())["skip_ack"] is False


def test_an_accepted_commit_is_counted_and_answered() -> None:
    rt = runtime()
    batch, prepared = prepare(rt, entry("1-1", 1), entry("1-2", 2), entry("1-3", 3, fail=True))
    with capture_logs() as logs:
        outcome = asyncio.run(rt.committer.settle(batch, prepared, [b"ok", 3]))
    assert [(x["event"], x["entry_id"]) for x in logs] == [("dead-lettered", "1-3")]
    assert outcome is not None
    assert (outcome.applied, outcome.duplicates, outcome.dead_lettered) == (2, 0, 1)
    assert (rt.stats["applied"], rt.stats["events_emitted"], rt.stats["commits"]) == (2, 2, 1)
    assert rt.stats["ack_mismatch"] == 0
    with capture_logs() as logs:
        asyncio.run(rt.committer.settle(batch, prepared, [b"ok", 1]))  # fewer acknowledged than sent
    assert logs[0]["log_level"] == "critical"
    assert rt.stats["ack_mismatch"] == 1


def test_duplicates_found_at_commit_are_left_out_of_the_next_attempt() -> None:
    rt = runtime()
    batch, prepared = prepare(rt, entry("1-1", 1), entry("1-2", 2))
    assert asyncio.run(rt.committer.settle(batch, prepared, [b"refused", b"duplicate", b"1-1"])) is None
    assert batch.known_duplicates == {"1-1"}
    again = asyncio.run(rt.committer.prepare(batch))
    assert isinstance(again, Prepared)
    assert again.plan.dedup == ["ev-2"]
    assert again.plan.ack == ["1-2", "1-1"]  # the duplicate is still acknowledged


def test_entries_no_longer_pending_are_dropped_and_a_batch_of_only_those_ends() -> None:
    rt = runtime()
    batch, prepared = prepare(rt, entry("1-1", 1), entry("1-2", 2))
    with capture_logs():
        assert asyncio.run(rt.committer.settle(batch, prepared, [b"refused", b"not_pending", b"1-1"])) is None
    assert [i.entry.entry_id for i in batch.items] == ["1-2"]
    _, prepared = prepare(rt, entry("1-2", 2))
    batch = rt.committer.batch(rt.subscriptions[0], [entry("1-2", 2)])
    with capture_logs():
        outcome = asyncio.run(rt.committer.settle(batch, prepared, [b"refused", b"not_pending", b"1-2"]))
    assert outcome is not None
    assert outcome.not_pending == 1


def test_a_version_conflict_asks_for_another_attempt_and_nonsense_is_an_error() -> None:
    rt = runtime()
    batch, prepared = prepare(rt, entry("1-1", 1))
    assert asyncio.run(rt.committer.settle(batch, prepared, [b"refused", b"version", b"mc:testsvc:x"])) is None
    assert rt.stats["conflicts"] == 1
    with pytest.raises(CommitError, match="unknown write operation"):
        asyncio.run(rt.committer.settle(batch, prepared, [b"refused", b"bad_op", b"lpush"]))
    with pytest.raises(CommitError, match="answered"):
        asyncio.run(rt.committer.settle(batch, prepared, [b"what"]))


@pytest.mark.parametrize("delivery", [1, 3])
def test_a_handler_that_raised_is_not_run_again_when_the_commit_is_refused(delivery: int) -> None:
    """A refused commit runs the batch again, but a handler that raised ran its one try
    of this delivery: the entry stays failed (or, at the last delivery, dead-lettered
    once), so a poison message costs exactly max_deliveries runs."""
    runs: list[int] = []

    async def flaky(msg: Message[Tick], tx: Transaction) -> None:
        runs.append(msg.payload.n)
        if msg.payload.fail:
            raise ValueError(f"tick {msg.payload.n} is poisonous")
        tx.incr("mc:testsvc:effects", str(msg.payload.n), 1)

    rt = ServiceRuntime(SERVICE, Settings(service=SERVICE, redis_url="redis://unused", max_deliveries=3))
    rt.add_route(Tick, flaky)
    rt.committer.redis = object()  # type: ignore[assignment]
    poison = Entry(entry("1-2", 2, fail=True).entry_id, entry("1-2", 2, fail=True).fields, delivery_count=delivery)
    batch, prepared = prepare(rt, entry("1-1", 1), poison)
    with capture_logs():
        assert asyncio.run(rt.committer.settle(batch, prepared, [b"refused", b"version", b"mc:testsvc:x"])) is None
        again = asyncio.run(rt.committer.prepare(batch))
    assert isinstance(again, Prepared)
    assert runs == [1, 2, 1]  # the good one again on fresh state; the poison one not
    assert [i.entry.entry_id for i in again.failed] == ["1-2"]
    dead = [(i.entry.entry_id, kind, reason) for i, kind, reason in again.dead]
    assert dead == ([("1-2", "failed", "ValueError: tick 2 is poisonous")] if delivery == 3 else [])
    assert again.plan.ack == (["1-1", "1-2"] if delivery == 3 else ["1-1"])


def test_a_batch_prepared_behind_another_is_sent_only_if_what_it_started_from_landed() -> None:
    """The pipeline's rule for a batch prepared while the one before it was committed."""
    from types import SimpleNamespace

    from minicloud_shared.runtime.pipeline import _still_valid

    def batch(
        reads: set[str],
        writes: frozenset[str] = frozenset(),
        inherited: frozenset[str] = frozenset(),
        raw: bool = False,
    ) -> Any:
        plan = SimpleNamespace(read_keys=reads, written_keys=writes)
        return SimpleNamespace(plan=plan, tx=SimpleNamespace(inherited=inherited, raw_reads=raw))

    def flight(writes: frozenset[str], redone: bool = False) -> Any:
        return SimpleNamespace(prepared=batch(set(), writes), redone=redone)

    hot = frozenset({"mc:s:account"})
    assert _still_valid(batch(set()), flight(hot, redone=True))  # read nothing: depends on nothing
    assert _still_valid(batch({"mc:s:x"}), flight(hot))  # no aggregate in common
    assert _still_valid(batch(set(hot), inherited=hot), flight(hot))  # started from what landed
    assert not _still_valid(batch(set(hot), inherited=hot), flight(hot, redone=True))  # it never landed as staged
    assert not _still_valid(batch({"mc:s:x"}), flight(hot, redone=True))
    assert not _still_valid(batch(set(hot)), flight(hot))  # read from Redis before the commit landed
    assert not _still_valid(batch(set(hot), inherited=hot, raw=True), flight(hot))  # raw reads may predate it
    assert _still_valid(batch({"mc:s:x"}, raw=True), flight(hot))  # as before: no shared aggregate
