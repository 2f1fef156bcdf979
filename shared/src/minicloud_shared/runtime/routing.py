"""What a service declares: its subscriptions (one consumer group on one stream) and
the route of each payload type to its handler; the entries read and the outcome of a
batch; the errors a handler or the commit can raise."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from minicloud_shared.contracts.envelope import Message, Payload
from minicloud_shared.contracts.runtime import DeadLettered
from minicloud_shared.contracts.topology import GroupSpec, dead_letter_stream, groups_of
from minicloud_shared.runtime.failpoints import SimulatedCrash
from minicloud_shared.runtime.transaction import Transaction
from minicloud_shared.settings import Settings

P = TypeVar("P", bound=Payload)
Handler = Callable[[Message[Any], Transaction], Awaitable[None]]
TypedHandler = Callable[[Message[P], Transaction], Awaitable[None]]
Prefetch = Callable[[Message[Any]], Sequence[str]]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
)

# A simulated crash and Redis being unreachable are not the handler's fault: they
# abandon or retry the batch, and never count towards dead-lettering.
NOT_A_HANDLER_FAILURE: tuple[type[BaseException], ...] = (SimulatedCrash, *TRANSIENT_ERRORS)


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
    prefetch: Prefetch | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """A stream entry as read: its id, raw fields and how often it was delivered."""

    entry_id: str
    fields: Mapping[bytes, bytes]
    delivery_count: int = 1


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
class BatchOutcome:
    applied: int = 0
    duplicates: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    failed: int = 0
    not_pending: int = 0


class Declarations:
    """What a service declares before it runs: its routes (by stream, then by payload
    type), the ticks it publishes, and the streams and logs it owns and trims."""

    def __init__(self, service: str, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.sealed = False  # set once the broker is built: no more routes
        self._subs: dict[str, Subscription] = {}
        self._owned_streams: list[str] = []
        self._tickers: list[tuple[float, Callable[[datetime], Payload]]] = []
        self._logs: dict[str, int] = {}  # groupless log streams this service owns -> seconds kept

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
        prefetch: Prefetch | None = None,
    ) -> None:
        if self.sealed:
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
