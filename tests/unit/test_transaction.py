"""The transaction's staging rules, with a tiny in-memory stand-in for the reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from minicloud_shared.clock import ManualClock
from minicloud_shared.contracts import Message, envelope_for
from minicloud_shared.runtime import KeyOutsideService, Transaction
from tests.support.events import Tick, Tock

T0 = datetime(2026, 11, 25, tzinfo=UTC)


class ReadOnlyRedis:
    def __init__(self, docs: dict[str, tuple[int, dict[str, Any]]]) -> None:
        self.docs = docs
        self.reads: list[str] = []

    async def hmget(self, key: str, fields: list[str]) -> list[Any]:
        self.reads.append(key)
        if key not in self.docs:
            return [None, None]
        version, doc = self.docs[key]
        return [str(version).encode(), json.dumps(doc).encode()]

    def register_script(self, _source: str) -> Any:
        async def read_many(keys: list[str]) -> list[Any]:
            return [x for k in keys for x in await self.hmget(k, ["v", "d"])]

        return read_many


def message(n: int, **kw: Any) -> Message[Tick]:
    return Message(envelope_for(Tick(n=n), producer="test", occurred_at=T0, **kw), Tick(n=n))


def tx_with(docs: dict[str, tuple[int, dict[str, Any]]]) -> tuple[Transaction, ReadOnlyRedis]:
    redis = ReadOnlyRedis(docs)
    return Transaction(redis, "svc", "mc:svc:", ManualClock(T0)), redis


async def test_versions_chain_across_messages_and_checks_use_the_first_read() -> None:
    tx, redis = tx_with({"mc:svc:a": (4, {"total": 10})})
    for n in (1, 2):
        tx.begin(message(n))
        doc = await tx.get("mc:svc:a")
        assert doc is not None
        await tx.put("mc:svc:a", {"total": doc["total"] + n})
        tx.keep()
    checks, ops, _ = tx.staged()
    assert checks == [["mc:svc:a", "4"]]  # what Redis had when first read
    assert ops == [["put", "mc:svc:a", "6", '{"total":13}']]  # one write, the final version
    assert redis.reads == ["mc:svc:a"]  # read once per batch


async def test_a_dropped_message_leaves_no_trace() -> None:
    tx, _ = tx_with({"mc:svc:a": (1, {"total": 1})})
    tx.begin(message(1))
    await tx.put("mc:svc:a", {"total": 2})
    tx.incr("mc:svc:counts", "x", 1)
    tx.emit(Tock(n=1))
    tx.keep()
    tx.begin(message(2))
    await tx.put("mc:svc:a", {"total": 99})
    tx.incr("mc:svc:counts", "x", 5)
    tx.emit(Tock(n=2))
    tx.drop()
    _, ops, events = tx.staged()
    assert ops == [["put", "mc:svc:a", "2", '{"total":2}'], ["hincrby", "mc:svc:counts", "x", "1"]]
    assert len(events) == 1
    assert [e.payload for e in tx.emitted] == [Tock(n=1)]


async def test_creating_an_aggregate_expects_it_absent() -> None:
    tx, _ = tx_with({})
    tx.begin(message(1))
    assert await tx.put("mc:svc:new", {"x": 1}) == 1
    tx.keep()
    checks, _, _ = tx.staged()
    assert checks == [["mc:svc:new", "0"]]


async def test_writes_outside_the_service_prefix_are_refused() -> None:
    tx, _ = tx_with({})
    tx.begin(message(1))
    with pytest.raises(KeyOutsideService):
        tx.incr("mc:billing:invoices", "x", 1)
    with pytest.raises(KeyOutsideService):
        await tx.put("mc:other:a", {})


async def test_emitted_events_inherit_and_derive_deterministically() -> None:
    ids = []
    for _ in range(2):  # handling the same message twice emits the same ids
        tx, _ = tx_with({})
        cause = message(1, tenant_id="t-1", correlation_id="req-1", event_id="e-1")
        tx.begin(cause)
        first = tx.emit(Tock(n=1))
        second = tx.emit(Tock(n=2), tenant_id=None)
        ids.append((first.event_id, second.event_id))
        assert first.correlation_id == "req-1"
        assert first.causation_id == "e-1"
        assert first.tenant_id == "t-1"
        assert second.tenant_id is None
        assert first.producer == "svc"
    assert ids[0] == ids[1]
    assert ids[0][0] != ids[0][1]


async def test_use_outside_a_handler_is_an_error() -> None:
    tx, _ = tx_with({})
    with pytest.raises(RuntimeError):
        tx.incr("mc:svc:a", "x", 1)
    tx.begin(message(1))
    with pytest.raises(RuntimeError):
        tx.staged()  # a message is still open


async def test_increments_of_one_field_are_summed_unless_the_key_is_touched_otherwise() -> None:
    tx, _ = tx_with({})
    for n in range(3):
        tx.begin(message(n))
        tx.incr("mc:svc:usage", "t-1", 60)
        tx.incr("mc:svc:usage", "t-2", 1)
        tx.incr("mc:svc:mixed", "x", 1)
        if n == 1:
            tx.delete("mc:svc:mixed")
        tx.keep()
    _, ops, _ = tx.staged()
    assert ops == [
        ["hincrby", "mc:svc:usage", "t-1", "180"],
        ["hincrby", "mc:svc:usage", "t-2", "3"],
        ["hincrby", "mc:svc:mixed", "x", "1"],
        ["hincrby", "mc:svc:mixed", "x", "1"],
        ["del", "mc:svc:mixed"],
        ["hincrby", "mc:svc:mixed", "x", "1"],
    ]


async def test_hooks_follow_the_fate_of_their_message() -> None:
    calls: list[str] = []
    tx, _ = tx_with({})
    tx.begin(message(1))
    tx.after_commit(lambda: calls.append("commit 1"))
    tx.after_abort(lambda: calls.append("abort 1"))
    tx.keep()
    tx.begin(message(2))
    tx.after_commit(lambda: calls.append("commit 2"))
    tx.after_abort(lambda: calls.append("abort 2"))
    tx.drop()  # message 2 failed: its abort hook runs now, its commit hook never
    assert calls == ["abort 2"]
    tx.committed()
    assert calls == ["abort 2", "commit 1"]
    tx.aborted()  # nothing left to run
    assert calls == ["abort 2", "commit 1"]


async def test_a_refused_batch_runs_the_abort_hooks_in_reverse() -> None:
    calls: list[int] = []
    tx, _ = tx_with({})
    for n in (1, 2):
        tx.begin(message(n))
        tx.after_abort(lambda n=n: calls.append(n))
        tx.keep()
    tx.aborted()
    assert calls == [2, 1]


async def test_load_validates_a_record_once_and_shares_it_until_it_changes() -> None:
    from pydantic import BaseModel, ConfigDict

    class Total(BaseModel):
        model_config = ConfigDict(frozen=True)
        total: int

    tx, redis = tx_with({"mc:svc:a": (4, {"total": 10})})
    tx.begin(message(1))
    first = await tx.load("mc:svc:a", Total)
    assert first == Total(total=10)
    assert await tx.load("mc:svc:a", Total) is first  # no second validation, no second read
    assert redis.reads == ["mc:svc:a"]
    assert await tx.load("mc:svc:missing", Total) is None
    changed = first.model_copy(update={"total": 11})
    await tx.put("mc:svc:a", changed)
    assert await tx.load("mc:svc:a", Total) is changed  # the staged record itself
    assert await tx.get("mc:svc:a") == {"total": 11}  # the dict view of it
    tx.drop()  # the message failed: its change is undone, the record read is shared again
    tx.begin(message(2))
    assert await tx.load("mc:svc:a", Total) is first
    await tx.put("mc:svc:a", first.model_copy(update={"total": 12}))
    tx.keep()
    checks, ops, _ = tx.staged()
    assert checks == [["mc:svc:a", "4"], ["mc:svc:missing", "0"]]  # what was read, absence included
    assert ops == [["put", "mc:svc:a", "5", '{"total":12}']]  # the record written as JSON at commit


async def test_a_batch_prepared_behind_another_starts_from_what_that_one_staged() -> None:
    """``inherit``: the aggregates the batch in flight staged are read as its commit will
    leave them, version included (no early read of Redis); one it also changed without
    a version, or a key it only read, is read from Redis as usual."""
    from pydantic import BaseModel, ConfigDict

    class Total(BaseModel):
        model_config = ConfigDict(frozen=True)
        total: int

    docs = {"mc:svc:a": (4, {"total": 10}), "mc:svc:b": (1, {"total": 1}), "mc:svc:c": (7, {"total": 7})}
    first, _ = tx_with(docs)
    first.begin(message(1))
    await first.put("mc:svc:a", Total(total=11))
    await first.put("mc:svc:b", {"total": 2})
    first.delete("mc:svc:b")  # changed without a version too
    await first.get("mc:svc:c")  # only read
    first.keep()
    second, redis = tx_with(docs)
    second.inherit(first)
    assert second.inherited == {"mc:svc:a"}
    second.begin(message(2))
    a = await second.load("mc:svc:a", Total)
    assert a is not None
    assert a.total == 11
    assert await second.get("mc:svc:a") == {"total": 11}  # the document of the inherited record
    assert await second.get("mc:svc:b") == {"total": 1}  # from Redis
    assert await second.get("mc:svc:c") == {"total": 7}  # from Redis
    assert redis.reads == ["mc:svc:b", "mc:svc:c"]
    await second.put("mc:svc:a", Total(total=12))
    assert not second.raw_reads
    _ = second.redis
    assert second.raw_reads  # the raw client is reads no version covers
    second.keep()
    checks, ops, _ = second.staged()
    assert ["mc:svc:a", "5"] in checks  # the version the first batch's commit writes
    assert ops[0] == ["put", "mc:svc:a", "6", '{"total":12}']
    with pytest.raises(RuntimeError, match="before anything is read"):
        second.inherit(first)


async def test_peek_reads_without_a_version_check_and_srem_unchanged_names_its_guards() -> None:
    from pydantic import BaseModel, ConfigDict

    class Total(BaseModel):
        model_config = ConfigDict(frozen=True)
        total: int

    tx, redis = tx_with({"mc:svc:a": (4, {"total": 10}), "mc:svc:b": (2, {"total": 5})})
    tx.begin(message(1))
    await tx.put("mc:svc:b", Total(total=6))  # staged here: peek sees it, at its new version
    assert not tx.raw_reads
    peeked = await tx.peek(["mc:svc:a", "mc:svc:b", "mc:svc:none"], Total)
    assert peeked == [(Total(total=10), 4), (Total(total=6), 3), (None, 0)]
    assert tx.raw_reads  # reads no version covers: the pipeline will not chain on them
    tx.srem_unchanged("mc:svc:dirty", "a", {"mc:svc:a": 4, "mc:svc:b": 3})
    with pytest.raises(KeyOutsideService):
        tx.srem_unchanged("mc:svc:dirty", "a", {"mc:other:a": 1})
    tx.keep()
    checks, ops, _ = tx.staged()
    assert [k for k, _ in checks] == ["mc:svc:b"]  # the blind write's read; nothing peeked is checked
    assert ["srem_unchanged", "mc:svc:dirty", "a", "mc:svc:a", "4", "mc:svc:b", "3"] in ops
    assert redis.reads == ["mc:svc:b", "mc:svc:a", "mc:svc:none"]
