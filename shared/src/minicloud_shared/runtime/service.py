"""The consumer runtime: exactly-once effects on Redis Streams' at-least-once delivery.

Every service builds one :class:`ServiceRuntime`, registers a handler per payload type
it consumes, and runs it. For each (stream, group) the runtime starts two FastStream
subscribers:

- a **worker** that reads new entries in bounded batches (``XREADGROUP COUNT n``);
- a **reclaimer** that takes over entries left pending longer than
  ``reclaim_idle_ms`` by a consumer that died or hung (``XAUTOCLAIM``).

Both hand entries to :meth:`ServiceRuntime.process`, which decodes them, drops those
already applied (dedup on the source ``event_id``), runs the handlers against a
:class:`~minicloud_shared.runtime.transaction.Transaction`, and commits the batch —
state writes with version checks, emitted events, dedup marks, dead letters and XACKs —
in one Lua script. FastStream never acknowledges anything itself
(``AckPolicy.MANUAL`` and no ``ack()``): the only XACK is the one inside the commit, so
an entry is acknowledged exactly when its effect is applied.

What happens to an entry:

- undecodable or invalid → dead-lettered at once (``kind=poison``), never retried;
- an event type this subscription does not handle → acknowledged, nothing else;
- its ``event_id`` already applied → acknowledged only (a duplicate);
- its handler raises :class:`Refused` → dead-lettered at once with the handler's
  reason (``kind=refused``): a message that must never take effect;
- its handler raises anything else → stays pending; the reclaimer redelivers it after the idle time;
  once it has failed on ``max_deliveries`` deliveries it is dead-lettered
  (``kind=failed``);
- Redis unreachable (connection errors, timeouts) → retried with backoff, never
  dead-lettered;
- a concurrent change to an aggregate it read → the batch is re-run on fresh state.

A running service that finds its groups or the deployment epoch gone (Redis restarted
empty) stops consuming and reports not-ready for good; it never recreates a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

import structlog
from faststream import AckPolicy, Context
from faststream.message import StreamMessage
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from minicloud_shared.clock import Clock, SystemClock
from minicloud_shared.contracts.envelope import (
    Message,
    Payload,
    PoisonMessage,
    decode_envelope,
    decode_payload,
    derived_event_id,
    encode,
    envelope_for,
    text,
)
from minicloud_shared.contracts.runtime import DLQ_FIELD_PREFIX, DeadLettered
from minicloud_shared.contracts.topology import (
    EPOCH_KEY,
    STREAMS,
    GroupSpec,
    dead_letter_stream,
    groups_of,
    key_prefix,
)
from minicloud_shared.logs import message_context
from minicloud_shared.runtime.failpoints import Failpoints, SimulatedCrash
from minicloud_shared.runtime.health import Health, HealthServer
from minicloud_shared.runtime.provision import missing_groups, provision
from minicloud_shared.runtime.transaction import Transaction
from minicloud_shared.runtime.trim import safe_trim
from minicloud_shared.settings import Settings

P = TypeVar("P", bound=Payload)
Handler = Callable[[Message[Any], Transaction], Awaitable[None]]
TypedHandler = Callable[[Message[P], Transaction], Awaitable[None]]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
)

# A simulated crash and Redis being unreachable are not the handler's fault: they
# abandon or retry the batch, and never count towards dead-lettering.
_NOT_A_HANDLER_FAILURE: tuple[type[BaseException], ...] = (SimulatedCrash, *TRANSIENT_ERRORS)

_COMMIT_LUA = resources.files("minicloud_shared.runtime").joinpath("commit.lua").read_text()


class CommitError(RuntimeError):
    """The commit script answered something it never should (a bug, not a fault)."""


class Refused(Exception):
    """Raised by a handler for a message that must never take effect, whatever the
    delivery (e.g. usage charged to a tenant that does not own the allocation). The
    message is dead-lettered at once with ``reason`` (``kind=refused``); retrying cannot
    change the answer, so it is not retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Route:
    payload_type: type[Payload]
    handler: Handler
    # Keys the handler will read for a message: read for the whole batch in one round
    # trip before the handlers run (the hot paths' handlers then never wait on Redis).
    prefetch: Callable[[Message[Any]], Sequence[str]] | None = None


@dataclass
class Subscription:
    """One consumer group of this service on one stream, and its handlers by type."""

    stream: str
    group: str
    batch_size: int
    routes: dict[str, Route] = field(default_factory=dict)
    # A dead-letter stream followed with ``on_dead_letters``: every entry goes to its one
    # route as a ``DeadLettered`` payload, whatever its type and whether it decodes.
    dead_letters: bool = False
    # Batches read by the worker, waiting for the processor (at most one: the next
    # read overlaps the current batch's processing, and no more is taken than that).
    queue: asyncio.Queue[list[Entry]] | None = None

    @property
    def spec(self) -> GroupSpec:
        return GroupSpec(self.stream, self.group)

    @property
    def dead_letter_stream(self) -> str:
        return dead_letter_stream(self.stream, self.group)


@dataclass(frozen=True, slots=True)
class Entry:
    """A stream entry as read: its id, raw fields and how often it was delivered."""

    entry_id: str
    fields: Mapping[bytes, bytes]
    delivery_count: int = 1


@dataclass(slots=True)
class _Item:
    entry: Entry
    message: Message[Any] | None = None
    route: Route | None = None
    poison: str | None = None
    event_id: str | None = None
    event_type: str | None = None


@dataclass(slots=True)
class _Batch:
    """One batch across its commit attempts."""

    sub: Subscription
    items: list[_Item]
    # Entries whose event the commit script found applied already. There is no
    # pre-check: duplicates are rare, so the script reports them all at once and
    # the batch runs again without them.
    known_duplicates: set[str] = field(default_factory=set)
    attempts: int = 0
    entries: list[Entry] = field(default_factory=list)


@dataclass(slots=True)
class _Prepared:
    """One attempt's commit plan and what it will mean once accepted."""

    plan: dict[str, Any]
    applied: list[_Item]
    duplicates: list[_Item]
    ignored: list[_Item]
    dead: list[tuple[_Item, str, str]]
    failed: list[_Item]
    events: int
    skip_ack: bool
    read_keys: set[str]
    written_keys: set[str]
    tx: Transaction


@dataclass(slots=True)
class _InFlight:
    """A batch whose commit was sent while the next batch is being prepared."""

    batch: _Batch
    prepared: _Prepared
    task: asyncio.Task[Any]
    redone: bool = False


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    applied: int = 0
    duplicates: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    failed: int = 0
    not_pending: int = 0


def _raw_parser_factory() -> tuple[Callable[..., Awaitable[StreamMessage[Any]]], Callable[..., Awaitable[None]]]:
    """A parser and decoder that skip FastStream's body decoding: the runtime decodes
    the plain stream fields itself (FastStream's batch parser re-encodes every entry as
    JSON, which costs more than the whole commit)."""

    async def parser(msg: Any) -> StreamMessage[Any]:
        return StreamMessage(raw_message=msg, body=b"", content_type="application/json")

    async def decoder(msg: StreamMessage[Any]) -> None:
        return None

    return parser, decoder


class ServiceRuntime:
    """A service's consumer runtime. See the module docstring."""

    def __init__(
        self,
        service: str,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        failpoints: Failpoints | None = None,
        logger: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self.service = service
        self.settings = settings or Settings(service=service)
        self.clock: Clock = clock or SystemClock()
        self.failpoints = failpoints or Failpoints()
        self.log: structlog.stdlib.BoundLogger = logger or structlog.get_logger(service=service)
        self.consumer_name = self.settings.resolved_consumer_name()
        self.key_prefix = key_prefix(service)
        self.health = Health()
        self.stats: Counter[str] = Counter()
        self._subs: dict[str, Subscription] = {}
        self._broker: RedisBroker | None = None
        self._redis: Redis | None = None
        self._commit: AsyncScript | None = None
        self._epoch: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._health_server: HealthServer | None = None
        self._stopping = False
        self._started = False
        self._owned_streams: list[str] = []
        self._tickers: list[tuple[float, Callable[[datetime], Payload]]] = []
        self._logs: dict[str, int] = {}  # groupless log streams this service owns -> seconds kept

    # --- declaration ---------------------------------------------------------------

    def on(
        self,
        payload_type: type[P],
        *,
        stream: str | None = None,
        batch_size: int | None = None,
        prefetch: Callable[[Message[P]], Sequence[str]] | None = None,
    ) -> Callable[[TypedHandler[P]], TypedHandler[P]]:
        """Register the handler of ``payload_type`` (read from its stream, or ``stream``)."""

        def deco(fn: TypedHandler[P]) -> TypedHandler[P]:
            self.add_route(payload_type, fn, stream=stream, batch_size=batch_size, prefetch=prefetch)
            return fn

        return deco

    def add_route(
        self,
        payload_type: type[Payload],
        handler: Handler,
        *,
        stream: str | None = None,
        batch_size: int | None = None,
        prefetch: Callable[[Message[Any]], Sequence[str]] | None = None,
    ) -> None:
        if self._broker is not None:
            raise RuntimeError("routes must be added before the runtime is built")
        name = stream or payload_type.stream
        sub = self._subs.get(name)
        if sub is None:
            sub = self._subs[name] = Subscription(name, self.service, batch_size or self.settings.batch_size)
        elif batch_size is not None:
            sub.batch_size = batch_size
        if payload_type.event_type in sub.routes:
            raise ValueError(f"{payload_type.event_type} already has a handler on {name}")
        sub.routes[payload_type.event_type] = Route(payload_type, handler, prefetch)

    def on_dead_letters(
        self,
        stream: str,
        group: str,
        handler: TypedHandler[DeadLettered],
        *,
        prefetch: Callable[[Message[DeadLettered]], Sequence[str]] | None = None,
    ) -> None:
        """Follow what ``group`` gave up on while reading ``stream`` (its dead-letter
        stream, read through this service's own group there). The handler gets each
        entry's original envelope and a :class:`DeadLettered` payload: the reason, and
        the original payload undecoded, so a message that could not be decoded is
        followed too. Entries whose envelope is unreadable are acknowledged and skipped."""
        name = dead_letter_stream(stream, group)
        self.add_route(DeadLettered, handler, stream=name, prefetch=prefetch)
        self._subs[name].dead_letters = True

    def every(self, interval_s: float, make: Callable[[datetime], Payload]) -> None:
        """Publish ``make(now)`` every ``interval_s`` of the service's clock.

        Time-driven work (deadlines, notice periods) then runs as an ordinary handler,
        exactly once: the tick's id is derived from the service, its type and the
        interval it falls in, so the ticks of several replicas collapse into one.
        """
        self._tickers.append((interval_s, make))

    def own_log(self, stream: str, keep_s: int) -> None:
        """A stream no consumer group reads (replicas follow it by position): trimmed by
        age alone, keeping ``keep_s`` seconds. Only for notifications that can be
        rebuilt from records, never for facts."""
        self._logs[stream] = keep_s

    def own_streams(self, *streams: str) -> None:
        """Streams this service produces and therefore trims."""
        self._owned_streams.extend(streams)

    @property
    def subscriptions(self) -> Sequence[Subscription]:
        return tuple(self._subs.values())

    @property
    def groups(self) -> list[GroupSpec]:
        """The groups this service consumes through: its subscriptions', and those the
        topology gives it (provisioned even before it has handlers for them, so nothing
        published meanwhile is skipped)."""
        specs = {s.spec: None for s in self._subs.values()}
        specs.update(dict.fromkeys(groups_of(self.service)))
        return list(specs)

    # --- wiring --------------------------------------------------------------------

    def build(self) -> RedisBroker:
        """Create the broker and its subscribers (also used to generate AsyncAPI docs)."""
        if self._broker is not None:
            return self._broker
        broker = RedisBroker(
            self.settings.redis_url,
            logger=self.log,
            log_level=10,  # FastStream's per-message lines at DEBUG: they cost ~20% throughput
            socket_timeout=max(5.0, self.settings.block_ms / 1000 + 5),
        )
        parser, decoder = _raw_parser_factory()
        for sub in self._subs.values():
            types = ", ".join(sorted(sub.routes))
            worker = broker.subscriber(
                stream=StreamSub(
                    sub.stream,
                    group=sub.group,
                    consumer=self.consumer_name,
                    batch=True,
                    max_records=sub.batch_size,
                    polling_interval=self.settings.block_ms,
                ),
                ack_policy=AckPolicy.MANUAL,
                parser=parser,
                decoder=decoder,
                title=f"{sub.stream}:{sub.group}",
                description=f"{self.service} consumes {types} from {sub.stream} (group {sub.group}).",
            )
            worker(self._worker_handler(sub))
            reclaimer = broker.subscriber(
                stream=StreamSub(
                    sub.stream,
                    group=sub.group,
                    consumer=f"{self.consumer_name}-reclaim",
                    min_idle_time=self.settings.reclaim_idle_ms,
                    polling_interval=self.settings.reclaim_poll_ms,
                ),
                ack_policy=AckPolicy.MANUAL,
                parser=parser,
                decoder=decoder,
                include_in_schema=False,
            )
            reclaimer(self._reclaimer_handler(sub))
        # The streams this service produces, declared for the AsyncAPI document (events
        # are published by the commit script, not through these publishers).
        for spec in STREAMS.values():
            if spec.owner == self.service:
                broker.publisher(stream=spec.name, title=spec.name, description=spec.description)
        self._broker = broker
        return broker

    def _worker_handler(self, sub: Subscription) -> Callable[..., Awaitable[None]]:
        async def consume(message: StreamMessage[Any] = Context("message")) -> None:
            raw = message.raw_message
            entries = [Entry(text(eid), fields, 1) for eid, fields in zip(raw["message_ids"], raw["data"], strict=True)]
            if sub.queue is None:  # not started through start(): process inline
                await self.process(sub, entries)
            else:
                await sub.queue.put(entries)

        consume.__name__ = f"on_{sub.stream.replace('.', '_')}"
        return consume

    async def _processor(self, sub: Subscription) -> None:
        """Commit the worker's batches one after another, in the order read.

        While batch k's commit is on its way to Redis, batch k+1's handlers already
        run (the commit is Redis's time, the handlers are ours: they overlap). Batch
        k+1 is committed only once k's reply is in, so commits stay in order. If k+1
        read an aggregate that k writes, k+1 is prepared again after k landed (the
        commit would refuse the stale read anyway; this saves the round trip), and
        the next batch waits for its predecessor instead: hot aggregates run
        sequentially, independent ones overlap.
        """
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
            if sequential_left > 0 or self.failpoints.active:
                sequential_left = max(0, sequential_left - 1)
                if inflight is not None:
                    await self._finish(inflight)
                    inflight = None
                await self._guarded(sub, self._process_pipelined(sub, entries))
                continue
            batch = _Batch(sub, [self._decode(sub, e) for e in entries], entries=list(entries))
            try:
                prepared = await self._prepare(batch)
            except Exception:
                # Whatever went wrong, the careful path retries it (transient errors) or
                # logs it (bugs); first the batch in flight must land.
                if inflight is not None:
                    await self._finish(inflight)
                    inflight = None
                await self._guarded(sub, self._process_pipelined(sub, entries))
                continue
            if inflight is not None:
                previous = inflight
                await self._finish(previous)
                inflight = None
                if (
                    isinstance(prepared, _Prepared)
                    and prepared.read_keys
                    and (prepared.read_keys & previous.prepared.written_keys or previous.redone)
                ):
                    self.stats["pipeline_reprepared"] += 1
                    # What was prepared is thrown away: in-memory state the handlers
                    # changed for it must be forgotten first (the after_abort hooks).
                    prepared.tx.aborted()
                    sequential_left, backoff = backoff, min(64, backoff * 2)
                    batch = _Batch(sub, [self._decode(sub, e) for e in entries], entries=list(entries))
                    await self._guarded(sub, self._process_pipelined(sub, entries, batch))
                    continue
                backoff = 1
            if isinstance(prepared, BatchOutcome):
                queue.task_done()
                continue
            task = asyncio.create_task(self._send(prepared))
            inflight = _InFlight(batch, prepared, task)
            # Let the commit go out on the socket now: otherwise it would only start
            # when we next wait for something, which may be that very commit.
            await asyncio.sleep(0)

    async def _process_pipelined(
        self, sub: Subscription, entries: Sequence[Entry], batch: _Batch | None = None
    ) -> BatchOutcome:
        """The careful path for one batch taken from the worker's queue."""
        assert sub.queue is not None
        try:
            if batch is None:
                return await self.process(sub, entries)
            try:
                return await self._run_batch(batch)
            except _NOT_A_HANDLER_FAILURE:
                return await self.process(sub, entries)
        finally:
            sub.queue.task_done()

    async def _guarded(self, sub: Subscription, work: Awaitable[BatchOutcome]) -> None:
        try:
            await work
        except Exception as exc:  # a bug or a lost group: the entries stay pending
            self.stats["batch_errors"] += 1
            self.log.error("batch failed; its entries stay pending", stream=sub.stream, exc_info=exc)

    async def _finish(self, inflight: _InFlight) -> None:
        """Settle a commit sent ahead; on refusal or error, finish the batch carefully."""
        batch = inflight.batch
        sub = batch.sub
        try:
            reply = await inflight.task
            outcome = await self._settle(batch, inflight.prepared, reply)
            if outcome is None:  # refused: run it again before anything after it commits
                inflight.redone = True
                await self._guarded(sub, self._process_pipelined(sub, batch.entries, batch))
                return
        except Exception:
            # The reply may be lost although the commit landed: the careful path finds
            # its entries acknowledged (or their events applied) and does nothing twice.
            inflight.prepared.tx.aborted()
            inflight.redone = True
            await self._guarded(sub, self._process_pipelined(sub, batch.entries))
            return
        assert sub.queue is not None
        sub.queue.task_done()

    def _reclaimer_handler(self, sub: Subscription) -> Callable[..., Awaitable[None]]:
        async def reclaim(message: StreamMessage[Any] = Context("message")) -> None:
            raw = message.raw_message
            entry_id = text(raw["message_ids"][0])
            count = await self._delivery_count(sub, entry_id)
            if count is None:  # acknowledged meanwhile: nothing to do
                return
            self.stats["reclaimed"] += 1
            await self.process(sub, [Entry(entry_id, raw["data"], count)])

        reclaim.__name__ = f"reclaim_{sub.stream.replace('.', '_')}"
        return reclaim

    async def _delivery_count(self, sub: Subscription, entry_id: str) -> int | None:
        rows = await self.redis.xpending_range(sub.stream, sub.group, min=entry_id, max=entry_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else None

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("runtime not started")
        return self._redis

    # --- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the Redis client and load the commit script (``start`` does it too).

        Enough to call :meth:`process` directly, without subscribers: benchmarks and
        the stateful test drive the commit path this way.
        """
        if self._redis is None:
            # No command of this client blocks, so a reply that takes 10 s is lost: the
            # timeout turns a stuck call into a transient error, retried, instead of a hang.
            self._redis = Redis.from_url(self.settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
            self._commit = self._redis.register_script(_COMMIT_LUA)

    async def start(self) -> None:
        """Provision, check, start consuming and the background loops."""
        broker = self.build()
        await self.connect()
        assert self._redis is not None
        groups = self.groups
        if self.settings.provision_on_start:
            report = await provision(self._redis, groups)
            if report.created:
                self.log.info(
                    "provisioned groups at id 0",
                    created=[f"{g.stream}:{g.group}" for g in report.created],
                )
        missing = await missing_groups(self._redis, groups)
        epoch = await self._redis.get(EPOCH_KEY)
        if missing or epoch is None:
            reason = (
                f"missing consumer group(s): {', '.join(f'{g.stream}:{g.group}' for g in missing)}"
                if missing
                else f"no deployment epoch ({EPOCH_KEY}): Redis is not provisioned"
            )
            self.health.set_not_ready(reason + "; run minicloud-provision", fatal=True)
            self.log.critical("refusing to start", reason=reason)
            raise RuntimeError(reason)
        self._epoch = text(epoch)
        for sub in self._subs.values():
            sub.queue = asyncio.Queue(maxsize=1)
            self._tasks.append(asyncio.create_task(self._processor(sub), name=f"{self.service}-process-{sub.stream}"))
        await broker.start()
        self._started = True
        self.health.set_ready()
        self._tasks.append(asyncio.create_task(self._watch(), name=f"{self.service}-watch"))
        for interval, make in self._tickers:
            self._tasks.append(asyncio.create_task(self._tick_loop(interval, make), name=f"{self.service}-tick"))
        if self._logs:
            self._tasks.append(asyncio.create_task(self._log_trim_loop(), name=f"{self.service}-logtrim"))
        if self.settings.trim_interval_s > 0 and self._owned_streams:
            self._tasks.append(asyncio.create_task(self._trim_loop(), name=f"{self.service}-trim"))
        await self._start_health_server()
        self.log.info(
            "consuming",
            consumer=self.consumer_name,
            streams=[s.stream for s in self._subs.values()],
            epoch=self._epoch,
        )

    async def _start_health_server(self) -> None:
        if self.settings.health_port and self._health_server is None:
            self._health_server = HealthServer(
                self.health, self.service, self.settings.health_host, self.settings.health_port
            )
            await self._health_server.start()

    async def stop(self) -> None:
        """Stop reading; the batch in hand finishes or stays pending (nothing is lost)."""
        if self._broker is not None and self._started:
            try:
                await asyncio.wait_for(self._broker.stop(), timeout=10)
            except TimeoutError:
                self.log.warning("the broker did not stop within 10 s; going on")
        self._started = False
        # Let batches already read finish (bounded); what does not finish stays pending.
        for sub in self._subs.values():
            if sub.queue is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.queue.join(), timeout=10)
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Every wait here is bounded: a task that does not end when cancelled
            # (e.g. stuck inside a library's shutdown) is reported, not waited for.
            _, stuck = await asyncio.wait(self._tasks, timeout=10)
            for task in stuck:
                self.log.warning("task did not stop within 10 s", task=task.get_name())
        self._tasks.clear()
        for sub in self._subs.values():
            sub.queue = None
        if self._health_server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_server.stop(), timeout=5)
            self._health_server = None
        if self._redis is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._redis.aclose(), timeout=5)
            self._redis = None

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM (the entrypoint of a service process)."""
        await self._start_health_server()  # answers "not ready" while Redis is unreachable
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            try:
                await self.start()
                break
            except TRANSIENT_ERRORS as exc:
                self.health.set_not_ready(f"redis unreachable: {exc}")
                self.log.warning("redis unreachable at start; retrying", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2)
            except RuntimeError:
                # Not provisioned / state lost: stay up, not ready, until stopped.
                await stop.wait()
        if not stop.is_set():
            await stop.wait()
        self.log.info("stopping")
        await self.stop()

    # --- background loops ----------------------------------------------------------------

    async def check_state(self) -> None:
        """One look at Redis: reachable, groups present, epoch unchanged."""
        try:
            epoch = await self.redis.get(EPOCH_KEY)
            missing = await missing_groups(self.redis, self.groups)
        except TRANSIENT_ERRORS as exc:
            if not self.health.fatal:
                self.health.set_not_ready(f"redis unreachable: {exc}")
            return
        lost: list[str] = []
        if epoch is None or text(epoch) != self._epoch:
            lost.append(f"deployment epoch {self._epoch} is gone (found {epoch!r}): Redis lost its state")
        if missing:
            lost.append("consumer group(s) gone: " + ", ".join(f"{g.stream}:{g.group}" for g in missing))
        if lost:
            if not self.health.fatal:
                self.log.critical(
                    "Redis lost this service's state; consuming stopped, groups NOT recreated. "
                    "Restore Redis from its AOF, or re-provision deliberately and reconcile.",
                    reasons=lost,
                )
                await self._stop_consuming()
            self.health.set_not_ready(*lost, fatal=True)
        else:
            self.health.set_ready()

    async def _stop_consuming(self) -> None:
        if self._broker is not None and self._started:
            self._started = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._broker.stop(), timeout=10)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self.check_state()

    async def _tick_loop(self, interval: float, make: Callable[[datetime], Payload]) -> None:
        while True:
            await self.clock.sleep(interval)
            now = self.clock.now()
            payload = make(now)
            bucket = str(int(now.timestamp() // interval))
            try:
                await publish(
                    self.redis,
                    payload,
                    producer=self.service,
                    event_id=derived_event_id(self.service, "tick", payload.event_type, bucket),
                    occurred_at=now,
                )
            except TRANSIENT_ERRORS:
                continue  # the next tick will do

    async def _log_trim_loop(self) -> None:
        while True:
            for stream, keep_s in self._logs.items():
                try:
                    secs, _ = await self.redis.time()
                    await self.redis.xtrim(stream, minid=f"{(int(secs) - keep_s) * 1000}-0", approximate=True)
                except TRANSIENT_ERRORS:
                    pass
            await asyncio.sleep(60)

    async def _trim_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.trim_interval_s)
            for stream in self._owned_streams:
                try:
                    result = await safe_trim(self.redis, stream, retention_s=self.settings.retention_s)
                except TRANSIENT_ERRORS:
                    continue
                if result.trimmed:
                    self.log.info("trimmed", stream=stream, trimmed=result.trimmed, min_id=result.min_id)

    # --- processing ------------------------------------------------------------------------

    def dedup_key(self, event_id: str) -> str:
        return f"{self.key_prefix}seen:{event_id}"

    async def process(self, sub: Subscription, entries: Sequence[Entry]) -> BatchOutcome:
        """Apply a batch exactly once; retry while Redis is unreachable."""
        delay = 0.05
        while True:
            try:
                return await self._process_once(sub, entries)
            except SimulatedCrash as crash:
                self.stats["crashes"] += 1
                self.log.warning("simulated crash: batch abandoned, left pending", point=str(crash))
                return BatchOutcome()
            except TRANSIENT_ERRORS as exc:
                self.stats["transient_errors"] += 1
                if self._stopping:
                    return BatchOutcome()
                self.log.warning("redis unreachable; retrying the batch", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _decode(self, sub: Subscription, entry: Entry) -> _Item:
        if sub.dead_letters:
            return self._decode_dead_letter(sub, entry)
        item = _Item(entry)
        raw_type = entry.fields.get(b"type")
        event_type = raw_type.decode("utf-8", "replace") if raw_type is not None else None
        if event_type is not None and event_type not in sub.routes:
            # Not ours (a consumer of a shared event stream sees every type): acknowledged
            # and ignored without building its envelope.
            item.event_type = event_type
            return item
        try:
            envelope, data = decode_envelope(entry.fields)
        except PoisonMessage as exc:
            item.poison, item.event_id, item.event_type = exc.reason, exc.event_id, exc.event_type
            return item
        item.event_id, item.event_type = envelope.event_id, envelope.event_type
        route = sub.routes.get(envelope.event_type)
        if route is None:
            return item  # not ours: acknowledged and ignored
        try:
            payload = decode_payload(envelope, data, route.payload_type)
        except PoisonMessage as exc:
            item.poison = exc.reason
            return item
        item.message, item.route = Message(envelope, payload), route
        return item

    def _decode_dead_letter(self, sub: Subscription, entry: Entry) -> _Item:
        item = _Item(entry)
        try:
            envelope, data = decode_envelope(entry.fields)
        except PoisonMessage as exc:
            item.event_id, item.event_type = exc.event_id, exc.event_type
            return item  # nothing to follow it by: acknowledged and ignored
        fields = {text(k): text(v) for k, v in entry.fields.items()}
        p = DLQ_FIELD_PREFIX
        count = fields.get(f"{p}delivery_count", "0")
        payload = DeadLettered(
            original_type=envelope.event_type,
            reason=fields.get(f"{p}reason", ""),
            kind=fields.get(f"{p}kind", ""),
            group=fields.get(f"{p}group", ""),
            delivery_count=int(count) if count.isdigit() else 0,
            data=text(data),
        )
        item.event_id, item.event_type = envelope.event_id, DeadLettered.event_type
        item.message, item.route = Message(envelope, payload), sub.routes[DeadLettered.event_type]
        return item

    async def _process_once(self, sub: Subscription, entries: Sequence[Entry]) -> BatchOutcome:
        return await self._run_batch(_Batch(sub, [self._decode(sub, e) for e in entries]))

    async def _run_batch(self, batch: _Batch) -> BatchOutcome:
        """Prepare, commit and settle until the commit is accepted (or retries run out)."""
        while batch.attempts < self.settings.commit_retries:
            prepared = await self._prepare(batch)
            if isinstance(prepared, BatchOutcome):
                return prepared
            try:
                outcome = await self._settle(batch, prepared, await self._send(prepared))
            except BaseException:
                prepared.tx.aborted()
                raise
            if outcome is not None:
                return outcome
        self.log.error("batch kept conflicting; left pending for the reclaimer", attempts=batch.attempts)
        self.stats["gave_up"] += 1
        return BatchOutcome()

    async def _prepare(self, batch: _Batch) -> _Prepared | BatchOutcome:
        """Run the handlers and build the commit plan (nothing is written here)."""
        settings = self.settings
        batch.attempts += 1
        duplicates: list[_Item] = []
        todo: list[_Item] = []
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
        dead: list[tuple[_Item, str, str]] = [(i, "poison", i.poison) for i in batch.items if i.poison is not None]

        tx = Transaction(self.redis, self.service, self.key_prefix, self.clock)
        wanted = [k for i in todo if i.route and i.route.prefetch and i.message for k in i.route.prefetch(i.message)]
        if wanted:
            await tx.prefetch(wanted)
        applied: list[_Item] = []
        failed: list[_Item] = []
        for item in todo:
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
            except _NOT_A_HANDLER_FAILURE:
                # The batch is abandoned (retried, or left pending): what the handlers so
                # far assumed in memory is forgotten, this message's and the kept ones'.
                tx.drop()
                tx.aborted()
                raise
            except Refused as exc:
                tx.drop()
                self.log.warning("refused", reason=exc.reason, next="dead-letter")
                dead.append((item, "refused", exc.reason[:1000]))
            except Exception as exc:
                tx.drop()
                failed.append(item)
                give_up = item.entry.delivery_count >= settings.max_deliveries
                self.log.error(
                    "handler failed",
                    delivery=item.entry.delivery_count,
                    max_deliveries=settings.max_deliveries,
                    next="dead-letter" if give_up else "left pending for redelivery",
                    exc_info=exc,
                )
                if give_up:
                    dead.append((item, "failed", f"{type(exc).__name__}: {exc}"[:1000]))
            else:
                tx.keep()
                applied.append(item)
            finally:
                message_context.reset(token)

        if self.failpoints.fires("before_commit"):
            self.failpoints.crash("before_commit")
        skip_ack = self.failpoints.fires("after_commit_before_ack")

        ack = [i.entry.entry_id for i in (*applied, *duplicates, *ignored)] + [d[0].entry.entry_id for d in dead]
        if not ack:
            return BatchOutcome(failed=len(failed))
        checks, ops, events = tx.staged()
        xadds: list[list[Any]] = [[stream, _flat(fields)] for stream, fields in events]
        for item, kind, reason in dead:
            xadds.append([batch.sub.dead_letter_stream, _flat(self._dead_letter_fields(batch.sub, item, kind, reason))])
        plan = {
            "s": batch.sub.stream,
            "g": batch.sub.group,
            "p": sorted(ack, key=_entry_order),
            "dp": self.dedup_key(""),
            "d": [i.event_id for i in applied],
            "de": [i.entry.entry_id for i in applied],
            "t": settings.dedup_ttl_s,
            "v": checks,
            "o": ops,
            "x": xadds,
            "a": ack,
            "na": 1 if skip_ack else 0,
        }
        return _Prepared(
            plan=plan,
            applied=applied,
            duplicates=duplicates,
            ignored=ignored,
            dead=dead,
            failed=failed,
            events=len(events),
            skip_ack=skip_ack,
            read_keys={k for k, _ in checks},
            written_keys={op[1] for op in ops},
            tx=tx,
        )

    async def _send(self, prepared: _Prepared) -> Any:
        assert self._commit is not None
        return await self._commit(keys=_plan_keys(prepared.plan), args=[json.dumps(prepared.plan)])

    async def _settle(self, batch: _Batch, prepared: _Prepared, reply: Any) -> BatchOutcome | None:
        """Account for an accepted commit, or adjust the batch for another attempt (None)."""
        status = text(reply[0])
        if status == "ok":
            prepared.tx.committed()
            acked = int(reply[1])
            expected = 0 if prepared.skip_ack else len(prepared.plan["a"])
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
            for item in prepared.duplicates:
                self.log.info(
                    "duplicate ignored",
                    event_id=item.event_id,
                    event_type=item.event_type,
                    entry_id=item.entry.entry_id,
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
            if prepared.skip_ack:
                self.stats["left_unacked_by_failpoint"] += len(prepared.plan["a"])
                self.failpoints.crash("after_commit_before_ack")
            return BatchOutcome(
                len(prepared.applied),
                len(prepared.duplicates),
                len(prepared.ignored),
                len(prepared.dead),
                len(prepared.failed),
            )
        if status != "refused":
            raise CommitError(f"commit script answered {reply!r}")
        prepared.tx.aborted()
        reason, detail = text(reply[1]), text(reply[2])
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

    def _dead_letter_fields(self, sub: Subscription, item: _Item, kind: str, reason: str) -> dict[str, str]:
        fields = (
            {text(k): text(v) for k, v in item.entry.fields.items()}
            if _utf8(item.entry.fields)
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


def dead_letter_entry(
    fields: Mapping[str, str],
    *,
    reason: str,
    kind: str,
    stream: str,
    group: str,
    entry_id: str,
    delivery_count: int,
    consumer: str,
) -> dict[str, str]:
    """A dead-letter entry: the original fields and why it was given up on (see
    ``contracts.runtime.DeadLetter``). Handlers that hold a message back and refuse it
    later (billing's parked usage) build theirs with this too."""
    p = DLQ_FIELD_PREFIX
    return {
        **fields,
        f"{p}reason": reason,
        f"{p}kind": kind,
        f"{p}stream": stream,
        f"{p}group": group,
        f"{p}entry_id": entry_id,
        f"{p}delivery_count": str(delivery_count),
        f"{p}consumer": consumer,
        f"{p}at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _utf8(fields: Mapping[bytes, bytes]) -> bool:
    try:
        for k, v in fields.items():
            text(k)
            text(v)
    except UnicodeDecodeError:
        return False
    return True


def _flat(fields: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        out.append(k)
        out.append(v)
    return out


def _plan_keys(plan: Mapping[str, Any]) -> list[str]:
    """The keys a commit declares: what the service writes and reads of its own. The
    source stream is left out: a service's ACL user may touch another's stream only
    with the group commands (a Redis selector), and a script's declared keys must all
    pass one selector; the script's XPENDING/XACK on it are checked one by one."""
    keys: dict[str, None] = {}
    for k, _ in plan["v"]:
        keys[k] = None
    for op in plan["o"]:
        keys[op[1]] = None
    for stream, _ in plan["x"]:
        keys[stream] = None
    return list(keys)


async def publish(
    redis: Redis,
    payload: Payload,
    *,
    producer: str,
    correlation_id: str | None = None,
    tenant_id: str | None = None,
    event_id: str | None = None,
    causation_id: str | None = None,
    occurred_at: datetime | None = None,
    clock: Clock | None = None,
    stream: str | None = None,
) -> tuple[str, str]:
    """Publish a message from outside a handler (gateway commands, tools, tests).

    Returns (entry id, event id). Retrying with the same ``event_id`` after a lost
    reply is safe: consumers deduplicate on it. Inside a handler use
    :meth:`Transaction.emit`, which publishes atomically with the handler's effects.
    """
    envelope = envelope_for(
        payload,
        producer=producer,
        occurred_at=occurred_at or (clock or SystemClock()).now(),
        event_id=event_id,
        tenant_id=tenant_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )
    entry_id = await redis.xadd(stream or payload.stream, encode(envelope, payload))  # type: ignore[arg-type]
    return text(entry_id), envelope.event_id


__all__ = [
    "BatchOutcome",
    "CommitError",
    "Entry",
    "Handler",
    "ResponseError",
    "Route",
    "ServiceRuntime",
    "Subscription",
    "publish",
]
