"""A handler's view of state: reads, staged writes and emitted events.

A handler never writes to Redis itself. It reads aggregates through the transaction
(which remembers each one's version), stages writes and events, and returns; the
runtime then commits everything the batch staged — with the dedup marks and the XACKs
— in one atomic script (``commit.lua``). If any aggregate changed since it was read,
the commit is refused as a whole and the runtime runs the handlers again on fresh
state (optimistic concurrency).

In a batch, handlers run one message after another against the same transaction, so
a later message sees what an earlier one staged. Each message's changes form a layer
that is kept when its handler returns and dropped when it raises, so one failing
message does not take the rest of the batch with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis

from minicloud_shared.clock import Clock
from minicloud_shared.contracts.envelope import (
    Envelope,
    Message,
    Payload,
    derived_event_id,
    encode,
)

M = TypeVar("M", bound=BaseModel)

_MISSING = object()


class KeyOutsideService(ValueError):
    """A handler tried to write a key its service does not own."""


@dataclass(slots=True)
class _Layer:
    docs: dict[str, tuple[int, dict[str, Any] | None]] = field(default_factory=dict)
    ops: list[list[Any]] = field(default_factory=list)
    events: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EmittedEvent:
    stream: str
    envelope: Envelope
    payload: Payload


class Transaction:
    """Staged effects of one batch; see the module docstring."""

    def __init__(self, redis: Redis, service: str, key_prefix: str, clock: Clock) -> None:
        self._redis = redis
        self._service = service
        self._prefix = key_prefix
        self._clock = clock
        # Versions as first read from Redis: what the commit checks.
        self._read_versions: dict[str, int] = {}
        self._read_docs: dict[str, dict[str, Any] | None] = {}
        self._kept = _Layer()
        self._layer: _Layer | None = None
        self._cause: Message[Any] | None = None
        self._emit_seq = 0
        self.emitted: list[EmittedEvent] = []
        self._layer_emitted: list[EmittedEvent] = []

    # --- message layers (driven by the runtime) -------------------------------------

    def begin(self, cause: Message[Any]) -> None:
        self._layer = _Layer()
        self._cause = cause
        self._emit_seq = 0
        self._layer_emitted = []

    def keep(self) -> None:
        layer = self._require_layer()
        self._kept.docs.update(layer.docs)
        self._kept.ops.extend(layer.ops)
        self._kept.events.extend(layer.events)
        self.emitted.extend(self._layer_emitted)
        self._layer = None

    def drop(self) -> None:
        self._layer = None

    def _require_layer(self) -> _Layer:
        if self._layer is None:
            raise RuntimeError("transaction used outside a handler")
        return self._layer

    @property
    def message(self) -> Message[Any]:
        """The message being handled."""
        if self._cause is None:
            raise RuntimeError("no message being handled")
        return self._cause

    @property
    def now(self) -> datetime:
        return self._clock.now()

    @property
    def redis(self) -> Redis:
        """The raw client, for reads the version check does not need to cover."""
        return self._redis

    # --- aggregates ------------------------------------------------------------------

    def _own(self, key: str) -> str:
        if not key.startswith(self._prefix):
            raise KeyOutsideService(f"{self._service} may only write keys under {self._prefix!r}, not {key!r}")
        return key

    async def get(self, key: str) -> dict[str, Any] | None:
        """An aggregate's current document (as staged so far), or None if it does not exist."""
        layer = self._require_layer()
        for docs in (layer.docs, self._kept.docs):
            hit = docs.get(key, _MISSING)
            if hit is not _MISSING:
                return hit[1]  # type: ignore[index]
        if key not in self._read_versions:
            version, data = await self._redis.hmget(key, ["v", "d"])  # type: ignore[misc]
            self._read_versions[key] = int(version) if version is not None else 0
            self._read_docs[key] = json.loads(data) if data is not None else None
        return self._read_docs[key]

    async def get_model(self, key: str, model: type[M]) -> M | None:
        doc = await self.get(key)
        return None if doc is None else model.model_validate(doc)

    def version(self, key: str) -> int:
        """The version the aggregate will have once this transaction commits."""
        layer = self._require_layer()
        for docs in (layer.docs, self._kept.docs):
            if key in docs:
                return docs[key][0]
        return self._read_versions.get(key, 0)

    async def put(self, key: str, doc: dict[str, Any] | BaseModel) -> int:
        """Stage a new version of an aggregate; returns that version.

        The aggregate is read first if it was not (a blind write would skip the
        version check); a key never seen before must not exist at commit time.
        """
        self._own(key)
        layer = self._require_layer()
        await self.get(key)
        data = doc.model_dump(mode="json") if isinstance(doc, BaseModel) else doc
        new_version = self.version(key) + 1
        layer.docs[key] = (new_version, data)
        return new_version

    # --- unversioned writes (indexes, counters) ----------------------------------------

    def incr(self, key: str, fld: str, amount: int) -> None:
        """Add an integer to a hash field (commutative: no version check needed)."""
        self._require_layer().ops.append(["hincrby", self._own(key), fld, str(int(amount))])

    def hset(self, key: str, fld: str, value: str) -> None:
        self._require_layer().ops.append(["hset", self._own(key), fld, value])

    def hdel(self, key: str, fld: str) -> None:
        self._require_layer().ops.append(["hdel", self._own(key), fld])

    def sadd(self, key: str, member: str) -> None:
        self._require_layer().ops.append(["sadd", self._own(key), member])

    def srem(self, key: str, member: str) -> None:
        self._require_layer().ops.append(["srem", self._own(key), member])

    def zadd(self, key: str, member: str, score: float) -> None:
        self._require_layer().ops.append(["zadd", self._own(key), repr(float(score)), member])

    def zrem(self, key: str, member: str) -> None:
        self._require_layer().ops.append(["zrem", self._own(key), member])

    def delete(self, key: str) -> None:
        self._require_layer().ops.append(["del", self._own(key)])

    # --- events ----------------------------------------------------------------------

    def emit(
        self,
        payload: Payload,
        *,
        tenant_id: str | None | object = _MISSING,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        stream: str | None = None,
    ) -> Envelope:
        """Stage an event, published atomically with this message's other effects.

        Its id is derived from the cause's id, this service and the emit's position,
        so handling the same message again emits the same ids. Pass ``event_id`` to
        name a unit of work yourself (e.g. allocation id + sequence). Correlation and
        tenant are inherited from the cause unless given.
        """
        layer = self._require_layer()
        cause = self.message
        self._emit_seq += 1
        envelope = Envelope(
            event_id=event_id or derived_event_id(cause.envelope.event_id, self._service, str(self._emit_seq)),
            event_type=payload.event_type,
            schema_version=payload.schema_version,
            occurred_at=occurred_at or self._clock.now(),
            producer=self._service,
            tenant_id=cause.envelope.tenant_id if tenant_id is _MISSING else tenant_id,  # type: ignore[arg-type]
            correlation_id=cause.envelope.correlation_id,
            causation_id=cause.envelope.event_id,
        )
        target = stream or payload.stream
        layer.events.append((target, encode(envelope, payload)))
        self._layer_emitted.append(EmittedEvent(target, envelope, payload))
        return envelope

    # --- the commit plan ---------------------------------------------------------------

    def staged(self) -> tuple[list[list[str]], list[list[Any]], list[tuple[str, dict[str, str]]]]:
        """(version checks, writes, events) of everything kept so far."""
        checks = [[k, str(v)] for k, v in self._read_versions.items()]
        ops: list[list[Any]] = [
            ["put", k, str(v), json.dumps(d, separators=(",", ":"))]
            for k, (v, d) in self._kept.docs.items()
        ]
        ops.extend(self._kept.ops)
        return checks, ops, list(self._kept.events)
