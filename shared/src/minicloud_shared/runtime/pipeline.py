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


class Pipeline:
    def __init__(self, committer: Committer) -> None:
        self.committer = committer

    async def run(self, sub: Subscription) -> None:
        """Commit the worker's batches one after another, in the order read.

        While batch k's commit is on its way to Redis, batch k+1's handlers already
        run (the commit is Redis's time, the handlers are ours: they overlap). Batch
        k+1 is committed only once k's reply is in, so commits stay in order. If k+1
        read an aggregate that k writes, k+1 is prepared again after k landed (the
        commit would refuse the stale read anyway; this saves the round trip), and
        the next batch waits for its predecessor instead: hot aggregates run
        sequentially, independent ones overlap.
        """
        c = self.committer
        assert sub.queue is not None
        queue = sub.queue
        inflight: _InFlight | None = None
        # After a stale read, this many batches run without overlap; the number
        # doubles (up to 64) while reads keep colliding and resets once they do not.
        sequential_left = 0
        backoff = 1
        while True:
            if inflight is not None and queue.empty():
                await self._finish(inflight)
                inflight = None
                continue
            entries = await queue.get()
            if sequential_left > 0 or c.failpoints.active:
                sequential_left = max(0, sequential_left - 1)
                if inflight is not None:
                    await self._finish(inflight)
                    inflight = None
                await self._guarded(sub, self._careful(sub, entries))
                continue
            batch = c.batch(sub, entries)
            try:
                prepared = await c.prepare(batch)
            except Exception:
                # Whatever went wrong, the careful path retries it (transient errors) or
                # logs it (bugs); first the batch in flight must land.
                if inflight is not None:
                    await self._finish(inflight)
                    inflight = None
                await self._guarded(sub, self._careful(sub, entries))
                continue
            if inflight is not None:
                previous = inflight
                await self._finish(previous)
                inflight = None
                if (
                    isinstance(prepared, Prepared)
                    and prepared.plan.read_keys
                    and (prepared.plan.read_keys & previous.prepared.plan.written_keys or previous.redone)
                ):
                    c.stats["pipeline_reprepared"] += 1
                    # What was prepared is thrown away: in-memory state the handlers
                    # changed for it must be forgotten first (the after_abort hooks).
                    prepared.tx.aborted()
                    sequential_left, backoff = backoff, min(64, backoff * 2)
                    await self._guarded(sub, self._careful(sub, entries, c.batch(sub, entries)))
                    continue
                backoff = 1
            if isinstance(prepared, BatchOutcome):
                queue.task_done()
                continue
            task = asyncio.create_task(c.send(prepared))
            inflight = _InFlight(batch, prepared, task)
            # Let the commit go out on the socket now: otherwise it would only start
            # when we next wait for something, which may be that very commit.
            await asyncio.sleep(0)

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
