"""The pipelined processor: a subscription's batches committed one after another, in
the order read, with the next batch's handlers running while the previous commit is
on its way to Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from minicloud_shared.runtime.batch import Batch, Committer, Prepared
from minicloud_shared.runtime.routing import NOT_A_HANDLER_FAILURE, BatchOutcome, Entry, Subscription


@dataclass(slots=True)
class _InFlight:
    """A batch whose commit was sent while the next batch is being prepared."""

    batch: Batch
    prepared: Prepared
    task: asyncio.Task[Any]
    redone: bool = False


@dataclass(slots=True)
class _State:
    """A subscription's pipeline between batches."""

    inflight: _InFlight | None = None
    # After a stale read, this many batches run without overlap; the number doubles
    # (up to 64) while reads keep colliding and resets once they do not.
    sequential_left: int = 0
    backoff: int = 1


class Pipeline:
    def __init__(self, committer: Committer) -> None:
        self.committer = committer

    async def run(self, sub: Subscription) -> None:
        """Commit the worker's batches one after another, in the order read.

        While batch k's commit is on its way to Redis, batch k+1's handlers already
        run (the commit is Redis's time, the handlers are ours: they overlap). Batch
        k+1 is committed only once k's reply is in, so commits stay in order.

        Hot aggregates (an account, an invoice, that every batch updates) overlap too:
        k+1 starts from the aggregates k staged, with the versions k's commit gives
        them (``Transaction.inherit``), so its version checks hold exactly when k
        landed as staged. k+1 is sent only if k was accepted as prepared; otherwise,
        or if k+1 read an aggregate k changed without a version (a counter, a
        deletion), or used reads no version covers while depending on k, it is
        prepared again after k landed and the next batches wait for their
        predecessors for a while (the commit would refuse it anyway; this saves the
        round trip).
        """
        assert sub.queue is not None
        queue = sub.queue
        state = _State()
        # The next batch is awaited as a task of its own: while a commit is in flight,
        # whichever comes first (the next batch, or the commit's reply) goes on. The
        # reader fills the queue only while this loop waits, so settling the commit
        # whenever the queue happened to be empty would overlap nothing.
        upcoming: asyncio.Future[list[Entry]] | None = None
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(queue.get())
                inflight = state.inflight
                if inflight is not None and not upcoming.done():
                    await asyncio.wait((upcoming, inflight.task), return_when=asyncio.FIRST_COMPLETED)
                    if not upcoming.done():  # the reply came first: settle it, keep waiting
                        state.inflight = None
                        await self._finish(inflight)
                        continue
                entries = await upcoming
                upcoming = None
                await self._step(sub, entries, state)
        finally:
            if upcoming is not None:
                upcoming.cancel()

    async def _step(self, sub: Subscription, entries: Sequence[Entry], state: _State) -> None:
        """One batch from the queue: prepared on top of the batch in flight (if any)
        and sent, or run carefully."""
        c = self.committer
        assert sub.queue is not None
        if state.sequential_left > 0 or c.failpoints.active:
            state.sequential_left = max(0, state.sequential_left - 1)
            await self._land(state)
            await self._guarded(sub, self._careful(sub, entries))
            return
        batch = c.batch(sub, entries)
        try:
            prepared = await c.prepare(batch, state.inflight.prepared.tx if state.inflight is not None else None)
        except Exception:
            # Whatever went wrong, the careful path retries it (transient errors) or
            # logs it (bugs); first the batch in flight must land.
            await self._land(state)
            await self._guarded(sub, self._careful(sub, entries))
            return
        previous = state.inflight
        if previous is not None:
            await self._land(state)
            if isinstance(prepared, Prepared) and not _still_valid(prepared, previous):
                c.stats["pipeline_reprepared"] += 1
                # What was prepared is thrown away: in-memory state the handlers
                # changed for it must be forgotten first (the after_abort hooks).
                prepared.tx.aborted()
                state.sequential_left, state.backoff = state.backoff, min(64, state.backoff * 2)
                await self._guarded(sub, self._careful(sub, entries, c.batch(sub, entries)))
                return
            state.backoff = 1
            if isinstance(prepared, Prepared) and prepared.plan.read_keys & prepared.tx.inherited:
                c.stats["pipeline_chained"] += 1
        if isinstance(prepared, BatchOutcome):
            sub.queue.task_done()
            return
        task = asyncio.create_task(c.send(prepared))
        state.inflight = _InFlight(batch, prepared, task)
        # Let the commit go out on the socket now: otherwise it would only start
        # when we next wait for something, which may be that very commit.
        await asyncio.sleep(0)

    async def _land(self, state: _State) -> None:
        """Settle the batch in flight, if any."""
        if state.inflight is not None:
            inflight, state.inflight = state.inflight, None
            await self._finish(inflight)

    async def _careful(self, sub: Subscription, entries: Sequence[Entry], batch: Batch | None = None) -> BatchOutcome:
        """The careful path for one batch taken from the worker's queue."""
        assert sub.queue is not None
        c = self.committer
        try:
            if batch is None:
                return await c.process(sub, entries)
            try:
                return await c.run(batch)
            except NOT_A_HANDLER_FAILURE:
                return await c.process(sub, entries)
        finally:
            sub.queue.task_done()

    async def _guarded(self, sub: Subscription, work: Awaitable[BatchOutcome]) -> None:
        try:
            await work
        except Exception as exc:  # a bug or a lost group: the entries stay pending
            self.committer.stats["batch_errors"] += 1
            self.committer.log.error("batch failed; its entries stay pending", stream=sub.stream, exc_info=exc)

    async def _finish(self, inflight: _InFlight) -> None:
        """Settle a commit sent ahead; on refusal or error, finish the batch carefully."""
        batch = inflight.batch
        sub = batch.sub
        try:
            reply = await inflight.task
            outcome = await self.committer.settle(batch, inflight.prepared, reply)
            if outcome is None:  # refused: run it again before anything after it commits
                inflight.redone = True
                await self._guarded(sub, self._careful(sub, batch.entries, batch))
                return
        except Exception:
            # The reply may be lost although the commit landed: the careful path finds
            # its entries acknowledged (or their events applied) and does nothing twice.
            inflight.prepared.tx.aborted()
            inflight.redone = True
            await self._guarded(sub, self._careful(sub, batch.entries))
            return
        assert sub.queue is not None
        sub.queue.task_done()


def _still_valid(prepared: Prepared, previous: _InFlight) -> bool:
    """Whether a batch prepared while ``previous`` was being committed may be sent as
    it is, now that ``previous`` is settled."""
    reads = prepared.plan.read_keys
    if not reads:
        return True  # it read no aggregate: nothing it decided can be stale
    if previous.redone:
        return False  # what it started from never landed as it was staged
    overlap = reads & previous.prepared.plan.written_keys
    if not overlap:
        return True
    # Every aggregate it shares with the previous batch must come from that batch's
    # staged state, and its unversioned reads must not have raced that commit.
    return overlap <= prepared.tx.inherited and not prepared.tx.raw_reads
