"""One batch, exactly once: run its handlers against a transaction, build the commit
plan, send it to the commit script, and settle the reply (accepted, or adjusted for
another attempt: duplicates found, entries no longer pending, a version conflict)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from minicloud_shared.clock import Clock
from minicloud_shared.contracts.envelope import text
from minicloud_shared.logs import message_context
from minicloud_shared.runtime.decoding import Item, decode_entry, entry_order, flat, utf8
from minicloud_shared.runtime.failpoints import Failpoints, SimulatedCrash
from minicloud_shared.runtime.metrics import RuntimeMetrics
from minicloud_shared.runtime.plan import CommitPlan
from minicloud_shared.runtime.publishing import dead_letter_entry
from minicloud_shared.runtime.routing import (
    NOT_A_HANDLER_FAILURE,
    TRANSIENT_ERRORS,
    BatchOutcome,
    CommitError,
    Entry,
    Refused,
    Subscription,
)
from minicloud_shared.runtime.transaction import Transaction
from minicloud_shared.settings import Settings


@dataclass(slots=True)
class Batch:
    """One batch across its commit attempts."""

    sub: Subscription
    items: list[Item]
    # Entries whose event the commit script found applied already. There is no
    # pre-check: duplicates are rare, so the script reports them all at once and
    # the batch runs again without them.
    known_duplicates: set[str] = field(default_factory=set)
    attempts: int = 0
    entries: list[Entry] = field(default_factory=list)
    # Entries whose handler raised in an earlier attempt of this delivery, with the
    # dead-letter reason where this delivery was the last: a refused commit runs the
    # batch again, but not a failed handler (it is tried once per delivery, so a
    # poison message costs exactly max_deliveries runs).
    failures: dict[str, str | None] = field(default_factory=dict)


@dataclass(slots=True)
class Prepared:
    """One attempt's commit plan and what it will mean once accepted."""

    plan: CommitPlan
    applied: list[Item]
    duplicates: list[Item]
    ignored: list[Item]
    dead: list[tuple[Item, str, str]]
    failed: list[Item]
    events: int
    tx: Transaction


class Committer:
    """Prepares, commits and settles batches for one service."""

    def __init__(
        self,
        service: str,
        key_prefix: str,
        settings: Settings,
        clock: Clock,
        failpoints: Failpoints,
        log: structlog.stdlib.BoundLogger,
        stats: Counter[str],
        consumer_name: str,
    ) -> None:
        self.service = service
        self.key_prefix = key_prefix
        self.settings = settings
        self.clock = clock
        self.failpoints = failpoints
        self.log = log
        self.stats = stats
        self.consumer_name = consumer_name
        self.redis: Redis | None = None  # set by the runtime's connect()
        self.script: AsyncScript | None = None
        self.stopping = False
        self.metrics = RuntimeMetrics(service)

    def dedup_key(self, event_id: str) -> str:
        return f"{self.key_prefix}seen:{event_id}"

    def batch(self, sub: Subscription, entries: Sequence[Entry]) -> Batch:
        return Batch(sub, [decode_entry(sub, e) for e in entries], entries=list(entries))

    async def process(self, sub: Subscription, entries: Sequence[Entry]) -> BatchOutcome:
        """Apply a batch exactly once; retry while Redis is unreachable."""
        delay = 0.05
        while True:
            try:
                return await self.run(self.batch(sub, entries))
            except SimulatedCrash as crash:
                self.stats["crashes"] += 1
                self.log.warning("simulated crash: batch abandoned, left pending", point=str(crash))
                return BatchOutcome()
            except TRANSIENT_ERRORS as exc:
                self.stats["transient_errors"] += 1
                self.metrics.redis_errors.inc()
                if self.stopping:
                    return BatchOutcome()
                self.log.warning("redis unreachable; retrying the batch", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run(self, batch: Batch) -> BatchOutcome:
        """Prepare, commit and settle until the commit is accepted (or retries run out)."""
        while batch.attempts < self.settings.commit_retries:
            prepared = await self.prepare(batch)
            if isinstance(prepared, BatchOutcome):
                return prepared
            try:
                outcome = await self.settle(batch, prepared, await self.send(prepared))
            except BaseException:
                prepared.tx.aborted()
                raise
            if outcome is not None:
                return outcome
        self.log.error("batch kept conflicting; left pending for the reclaimer", attempts=batch.attempts)
        self.stats["gave_up"] += 1
        return BatchOutcome()

    async def _handle(self, batch: Batch, tx: Transaction, item: Item, dead: list[tuple[Item, str, str]]) -> bool:
        """Run one message's handler; whether its effects are kept."""
        assert item.message is not None
        assert item.route is not None
        env = item.message.envelope
        tx.begin(item.message)
        token = message_context.set(
            {
                "event_type": env.event_type,
                "event_id": env.event_id,
                "correlation_id": env.correlation_id,
                "tenant_id": env.tenant_id,
                "entry_id": item.entry.entry_id,
            }
        )
        try:
            await item.route.handler(item.message, tx)
        except NOT_A_HANDLER_FAILURE:
            # The batch is abandoned (retried, or left pending): what the handlers so
            # far assumed in memory is forgotten, this message's and the kept ones'.
            tx.drop()
            tx.aborted()
            raise
        except Refused as exc:
            tx.drop()
            self.log.warning("refused", reason=exc.reason, next="dead-letter")
            dead.append((item, "refused", exc.reason[:1000]))
            return False
        except Exception as exc:
            tx.drop()
            give_up = item.entry.delivery_count >= self.settings.max_deliveries
            self.log.error(
                "handler failed",
                delivery=item.entry.delivery_count,
                max_deliveries=self.settings.max_deliveries,
                next="dead-letter" if give_up else "left pending for redelivery",
                exc_info=exc,
            )
            reason = f"{type(exc).__name__}: {exc}"[:1000] if give_up else None
            batch.failures[item.entry.entry_id] = reason
            if reason is not None:
                dead.append((item, "failed", reason))
            raise _Failed from exc
        else:
            tx.keep()
            return True
        finally:
            message_context.reset(token)

    async def prepare(self, batch: Batch, after: Transaction | None = None) -> Prepared | BatchOutcome:
        """Run the handlers and build the commit plan (nothing is written here).
        ``after``: the transaction of the batch still being committed before this one,
        whose staged aggregates this one starts from (``Transaction.inherit``)."""
        batch.attempts += 1
        started = time.perf_counter()
        sub = batch.sub
        if batch.attempts == 1:
            self.metrics.batch_size.labels(sub.stream, sub.group).observe(len(batch.items))
        duplicates: list[Item] = []
        todo: list[Item] = []
        in_batch: set[str] = set()
        for item in batch.items:
            if item.message is None:
                continue
            # A copy already applied, or a second copy within this very batch.
            if item.entry.entry_id in batch.known_duplicates or item.event_id in in_batch:
                duplicates.append(item)
            else:
                in_batch.add(item.event_id or "")
                todo.append(item)
        ignored = [i for i in batch.items if i.message is None and i.poison is None]
        dead: list[tuple[Item, str, str]] = [(i, "poison", i.poison) for i in batch.items if i.poison is not None]
        assert self.redis is not None
        tx = Transaction(self.redis, self.service, self.key_prefix, self.clock)
        if after is not None:
            tx.inherit(after)
        wanted = [k for i in todo if i.route and i.route.prefetch and i.message for k in i.route.prefetch(i.message)]
        if wanted:
            await tx.prefetch(wanted)
        applied: list[Item] = []
        failed: list[Item] = []
        for item in todo:
            if item.entry.entry_id in batch.failures:
                failed.append(item)
                reason = batch.failures[item.entry.entry_id]
                if reason is not None:
                    dead.append((item, "failed", reason))
                continue
            try:
                if await self._handle(batch, tx, item, dead):
                    applied.append(item)
            except _Failed:
                failed.append(item)
        if self.failpoints.fires("before_commit"):
            self.failpoints.crash("before_commit")
        skip_ack = self.failpoints.fires("after_commit_before_ack")
        ack = [i.entry.entry_id for i in (*applied, *duplicates, *ignored)] + [d[0].entry.entry_id for d in dead]
        if not ack:
            if failed:
                self.metrics.messages.labels(sub.stream, sub.group, "failed").inc(len(failed))
            return BatchOutcome(failed=len(failed))
        checks, ops, events = tx.staged()
        appends: list[list[Any]] = [[stream, flat(fields)] for stream, fields in events]
        for item, kind, reason in dead:
            appends.append(
                [batch.sub.dead_letter_stream, flat(self._dead_letter_fields(batch.sub, item, kind, reason))]
            )
        plan = CommitPlan(
            stream=batch.sub.stream,
            group=batch.sub.group,
            pending=sorted(ack, key=entry_order),
            dedup_prefix=self.dedup_key(""),
            dedup=[i.event_id or "" for i in applied],
            dedup_entries=[i.entry.entry_id for i in applied],
            dedup_ttl_s=self.settings.dedup_ttl_s,
            checks=checks,
            writes=ops,
            appends=appends,
            ack=ack,
            skip_ack=skip_ack,
        )
        self.metrics.handler_seconds.labels(sub.stream, sub.group).observe(time.perf_counter() - started)
        return Prepared(plan, applied, duplicates, ignored, dead, failed, len(events), tx)

    async def send(self, prepared: Prepared) -> Any:
        assert self.script is not None
        plan = prepared.plan
        started = time.perf_counter()
        reply = await self.script(keys=plan.declared_keys(), args=[plan.to_json()])
        self.metrics.commit_seconds.labels(plan.stream, plan.group).observe(time.perf_counter() - started)
        return reply

    async def settle(self, batch: Batch, prepared: Prepared, reply: Any) -> BatchOutcome | None:
        """Account for an accepted commit, or adjust the batch for another attempt (None)."""
        status = text(reply[0])
        if status == "ok":
            return self._accepted(batch, prepared, int(reply[1]))
        if status != "refused":
            raise CommitError(f"commit script answered {reply!r}")
        prepared.tx.aborted()
        reason, detail = text(reply[1]), text(reply[2])
        sub = batch.sub
        if reason in ("duplicate", "not_pending", "version"):
            refusal = "conflict" if reason == "version" else reason
            self.metrics.refused.labels(sub.stream, sub.group, refusal).inc()
        if reason == "duplicate":
            batch.known_duplicates.update(text(x) for x in reply[2:])
            self.stats["duplicate_reruns"] += 1
        elif reason == "not_pending":
            # Someone else acknowledged them (or dead-lettered them meanwhile): not ours to apply.
            gone = {text(x) for x in reply[2:]}
            self.stats["not_pending"] += len(gone)
            batch.items = [i for i in batch.items if i.entry.entry_id not in gone]
            self.log.info("entries no longer pending (another consumer finished them); skipped", entry_ids=sorted(gone))
            if not batch.items:
                return BatchOutcome(not_pending=len(gone))
        elif reason == "bad_op":
            raise CommitError(f"unknown write operation {detail!r}")
        else:  # a version conflict: run again on fresh state
            self.stats["conflicts"] += 1
            await asyncio.sleep(random.uniform(0, 0.002 * batch.attempts))
        return None

    def _accepted(self, batch: Batch, prepared: Prepared, acked: int) -> BatchOutcome:
        prepared.tx.committed()
        plan = prepared.plan
        expected = 0 if plan.skip_ack else len(plan.ack)
        if acked != expected:
            # Cannot happen: the script checked every id was pending.
            self.log.critical("XACK acknowledged fewer entries than committed", acked=acked, expected=expected)
            self.stats["ack_mismatch"] += 1
        self.stats["applied"] += len(prepared.applied)
        self.stats["duplicates"] += len(prepared.duplicates)
        self.stats["ignored"] += len(prepared.ignored)
        self.stats["dead_lettered"] += len(prepared.dead)
        self.stats["failed"] += len(prepared.failed)
        self.stats["events_emitted"] += prepared.events
        self.stats["commits"] += 1
        sub = batch.sub
        m = self.metrics
        m.commits.labels(sub.stream, sub.group).inc()
        for outcome, n in (
            ("applied", len(prepared.applied)),
            ("duplicate", len(prepared.duplicates)),
            ("ignored", len(prepared.ignored)),
            ("dead_lettered", len(prepared.dead)),
            ("failed", len(prepared.failed)),
        ):
            if n:
                m.messages.labels(sub.stream, sub.group, outcome).inc(n)
        if prepared.tx.emitted:
            for event_type, n in Counter(e.envelope.event_type for e in prepared.tx.emitted).items():
                m.events.labels(event_type).inc(n)
        for item in prepared.duplicates:
            self.log.info(
                "duplicate ignored", event_id=item.event_id, event_type=item.event_type, entry_id=item.entry.entry_id
            )
        for item, kind, reason in prepared.dead:
            self.log.warning(
                "dead-lettered",
                kind=kind,
                reason=reason,
                event_id=item.event_id,
                event_type=item.event_type,
                entry_id=item.entry.entry_id,
                delivery=item.entry.delivery_count,
                dlq=batch.sub.dead_letter_stream,
            )
        if plan.skip_ack:
            self.stats["left_unacked_by_failpoint"] += len(plan.ack)
            self.failpoints.crash("after_commit_before_ack")
        return BatchOutcome(
            len(prepared.applied),
            len(prepared.duplicates),
            len(prepared.ignored),
            len(prepared.dead),
            len(prepared.failed),
        )

    def _dead_letter_fields(self, sub: Subscription, item: Item, kind: str, reason: str) -> dict[str, str]:
        fields = (
            {text(k): text(v) for k, v in item.entry.fields.items()}
            if utf8(item.entry.fields)
            else {"raw": repr(dict(item.entry.fields))[:10_000]}
        )
        return dead_letter_entry(
            fields,
            reason=reason,
            kind=kind,
            stream=sub.stream,
            group=sub.group,
            entry_id=item.entry.entry_id,
            delivery_count=item.entry.delivery_count,
            consumer=self.consumer_name,
        )


class _Failed(Exception):
    """A handler raised: its message stays pending (or was dead-lettered)."""
