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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from minicloud_shared.runtime.plan import coalesce_increments

M = TypeVar("M", bound=BaseModel)

_MISSING: Any = object()
_LAZY: Any = object()  # an inherited record whose document is built when first asked for

# Versions and documents of many aggregates, flat: v1, d1, v2, d2, ... (nil when absent).
_READ_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local vd = redis.call('HMGET', key, 'v', 'd')
  out[2 * i - 1] = vd[1]
  out[2 * i] = vd[2]
end
return out
"""


class KeyOutsideService(ValueError):
    """A handler tried to write a key its service does not own."""


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
        self._read_models: dict[str, BaseModel] = {}  # read documents as typed records (``load``)
        # Staged state, kept and current message alike: a document, or a typed record
        # (frozen; written as JSON when the commit plan is built).
        self._docs: dict[str, tuple[int, dict[str, Any] | BaseModel]] = {}
        self._ops: list[list[Any]] = []
        self._events: list[tuple[str, dict[str, str]]] = []
        self.emitted: list[EmittedEvent] = []
        # The current message's savepoint: list lengths and the docs it overwrote.
        self._active = False
        self._savepoint = (0, 0, 0)
        self._undo: dict[str, tuple[int, dict[str, Any] | BaseModel] | None] = {}
        self._cause: Message[Any] | None = None
        self._emit_seq = 0
        self._on_commit: list[Callable[[], None]] = []
        self._on_abort: list[Callable[[], None]] = []
        self._hook_savepoint = (0, 0)
        # Aggregates taken from the batch before this one (``inherit``), and whether a
        # handler used the raw client (reads no version check covers).
        self.inherited: frozenset[str] = frozenset()
        self.raw_reads = False

    def inherit(self, previous: Transaction) -> None:
        """Start from the aggregates ``previous`` staged: a batch prepared while the
        batch before it is still being committed reads them as that commit will leave
        them (version included) instead of reading Redis too early. If ``previous`` does
        not commit, this batch is thrown away (the runtime's pipeline sees to it); if
        it does, the versions checked here are exactly what it wrote."""
        if self._read_versions or self._docs:
            raise RuntimeError("inherit() before anything is read")
        touched = {op[1] for op in previous._ops}  # changed without a version too: read afresh
        for key, (version, doc) in previous._docs.items():
            if key in touched:
                continue
            self._read_versions[key] = version
            if isinstance(doc, BaseModel):
                self._read_models[key] = doc
                self._read_docs[key] = _LAZY
            else:
                self._read_docs[key] = doc
        self.inherited = frozenset(k for k in previous._docs if k not in touched)

    # --- message layers (driven by the runtime) -------------------------------------

    def begin(self, cause: Message[Any]) -> None:
        self._active = True
        self._savepoint = (len(self._ops), len(self._events), len(self.emitted))
        self._hook_savepoint = (len(self._on_commit), len(self._on_abort))
        if self._undo:
            self._undo = {}
        self._cause = cause
        self._emit_seq = 0

    def keep(self) -> None:
        self._require_layer()
        self._active = False

    def drop(self) -> None:
        self._require_layer()
        ops, events, emitted = self._savepoint
        del self._ops[ops:]
        del self._events[events:]
        del self.emitted[emitted:]
        for key, previous in self._undo.items():
            if previous is None:
                self._docs.pop(key, None)
            else:
                self._docs[key] = previous
        commits, aborts = self._hook_savepoint
        dropped = self._on_abort[aborts:]
        del self._on_commit[commits:]
        del self._on_abort[aborts:]
        self._active = False
        for hook in reversed(dropped):
            hook()

    # --- hooks for in-memory caches ---------------------------------------------------

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once this message's effects are committed."""
        self._require_layer()
        self._on_commit.append(hook)

    def after_abort(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` if this message's effects are not committed after all (its
        handler failed, or the batch's commit was refused and will be re-run): for a
        service that mirrors its state in memory, to forget what it assumed."""
        self._require_layer()
        self._on_abort.append(hook)

    def committed(self) -> None:
        """Called by the runtime when the batch's commit was accepted."""
        hooks, self._on_commit, self._on_abort = self._on_commit, [], []
        for hook in hooks:
            hook()

    def aborted(self) -> None:
        """Called by the runtime when the batch will not commit as prepared."""
        hooks, self._on_commit, self._on_abort = self._on_abort, [], []
        for hook in reversed(hooks):
            hook()

    def _require_layer(self) -> None:
        if not self._active:
            raise RuntimeError("transaction used outside a handler")

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
        self.raw_reads = True
        return self._redis

    # --- aggregates ------------------------------------------------------------------

    def _own(self, key: str) -> str:
        if not key.startswith(self._prefix):
            raise KeyOutsideService(f"{self._service} may only write keys under {self._prefix!r}, not {key!r}")
        return key

    async def get(self, key: str) -> dict[str, Any] | None:
        """An aggregate's current document (as staged so far), or None if it does not exist."""
        self._require_layer()
        staged = self._docs.get(key)
        if staged is not None:
            doc = staged[1]
            return doc.model_dump(mode="json") if isinstance(doc, BaseModel) else doc
        if key not in self._read_versions:
            version, data = await self._redis.hmget(key, ["v", "d"])
            self._read_versions[key] = int(version) if version is not None else 0
            self._read_docs[key] = json.loads(data) if data is not None else None
        found = self._read_docs[key]
        if found is _LAZY:
            found = self._read_docs[key] = self._read_models[key].model_dump(mode="json")
        return found

    async def load(self, key: str, record: type[M]) -> M | None:
        """An aggregate as a typed record (as staged so far), or None. ``record`` must be
        frozen: the instance returned is shared with what is staged and what the next
        ``load`` returns (a record changes by ``model_copy``, then ``put``), so a batch
        of handlers reading one aggregate validates it once."""
        self._require_layer()
        staged = self._docs.get(key)
        if staged is not None and isinstance(staged[1], record):
            return staged[1]
        cached = self._read_models.get(key)
        if staged is None and isinstance(cached, record):
            return cached
        doc = await self.get(key)
        if doc is None:
            return None
        model = record.model_validate(doc)
        if staged is None:
            self._read_models[key] = model
        return model

    async def peek(self, keys: Sequence[str], record: type[M]) -> list[tuple[M | None, int]]:
        """Aggregates as staged so far, or as Redis holds them now, each with its
        version, *without* a version check at commit (those not read yet come in one
        round trip): for work that may act on a slightly old state and says so, such
        as a snapshot announced with its revision. What it decides must not depend on
        the read being current; ``srem_unchanged`` undoes a mark only if the
        aggregate did not change meanwhile."""
        self._require_layer()
        todo = list(dict.fromkeys(k for k in keys if k not in self._docs and k not in self._read_versions))
        fresh: dict[str, tuple[M | None, int]] = {}
        if todo:
            self.raw_reads = True
            flat: Any = await self._redis.register_script(_READ_LUA)(keys=todo)
            for i, key in enumerate(todo):
                version, data = flat[2 * i], flat[2 * i + 1]
                fresh[key] = (record.model_validate_json(data) if data else None, int(version) if version else 0)
        out: list[tuple[M | None, int]] = []
        for key in keys:
            found = fresh.get(key)
            out.append(found if found is not None else (await self.load(key, record), self.version(key)))
        return out

    async def prefetch(self, keys: Sequence[str]) -> None:
        """Read aggregates not read yet in one round trip (their versions are checked at
        commit like any other read). Allowed outside a handler: the runtime calls it
        before a batch's handlers run."""
        todo = list(dict.fromkeys(k for k in keys if k not in self._read_versions and k not in self._docs))
        if not todo:
            return
        # One script call, one flat reply: far cheaper in redis-py than a pipeline of
        # HMGETs (each of those is packed, timed and parsed on its own).
        flat: Any = await self._redis.register_script(_READ_LUA)(keys=todo)
        for i, key in enumerate(todo):
            version, data = flat[2 * i], flat[2 * i + 1]
            self._read_versions[key] = int(version) if version else 0
            self._read_docs[key] = json.loads(data) if data else None

    def version(self, key: str) -> int:
        """The version the aggregate will have once this transaction commits."""
        staged = self._docs.get(key)
        return staged[0] if staged is not None else self._read_versions.get(key, 0)

    async def put(self, key: str, doc: dict[str, Any] | BaseModel) -> int:
        """Stage a new version of an aggregate; returns that version.

        The aggregate is read first if it was not (a blind write would skip the
        version check); a key never seen before must not exist at commit time.
        """
        self._own(key)
        if key not in self._read_versions and key not in self._docs:
            await self.get(key)
        if key not in self._undo:
            self._undo[key] = self._docs.get(key)
        new_version = self.version(key) + 1
        self._docs[key] = (new_version, doc)
        return new_version

    # --- unversioned writes (indexes, counters) ----------------------------------------

    def _op(self, op: list[Any]) -> None:
        self._require_layer()
        self._ops.append(op)

    def incr(self, key: str, fld: str, amount: int) -> None:
        """Add an integer to a hash field (commutative: no version check needed)."""
        self._op(["hincrby", self._own(key), fld, str(int(amount))])

    def hset(self, key: str, fld: str, value: str) -> None:
        self._op(["hset", self._own(key), fld, value])

    def hdel(self, key: str, fld: str) -> None:
        self._op(["hdel", self._own(key), fld])

    def sadd(self, key: str, member: str) -> None:
        self._op(["sadd", self._own(key), member])

    def srem(self, key: str, member: str) -> None:
        self._op(["srem", self._own(key), member])

    def srem_unchanged(self, key: str, member: str, guards: Mapping[str, int]) -> None:
        """Remove ``member`` from the set only if every aggregate in ``guards`` is still
        at the version given when the commit applies: a "changed" mark is cleared by
        whoever handled the change, and stays if what it covers changed again
        meanwhile (whatever changed it then found the mark already set)."""
        flat = [x for key, version in guards.items() for x in (self._own(key), str(int(version)))]
        self._op(["srem_unchanged", self._own(key), member, *flat])

    def zadd(self, key: str, member: str, score: float) -> None:
        self._op(["zadd", self._own(key), repr(float(score)), member])

    def zrem(self, key: str, member: str) -> None:
        self._op(["zrem", self._own(key), member])

    def delete(self, key: str) -> None:
        self._op(["del", self._own(key)])

    # --- events ----------------------------------------------------------------------

    def emit(
        self,
        payload: Payload,
        *,
        tenant_id: str | object | None = _MISSING,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        stream: str | None = None,
        correlation_id: str | None = None,
    ) -> Envelope:
        """Stage an event, published atomically with this message's other effects.

        Its id is derived from the cause's id, this service and the emit's position,
        so handling the same message again emits the same ids. Pass ``event_id`` to
        name a unit of work yourself (e.g. allocation id + sequence). Correlation and
        tenant are inherited from the cause unless given: an event made on behalf of
        something a request created earlier (a placement made on a tick) passes that
        request's ``correlation_id``, and its causation still names the cause.
        """
        self._require_layer()
        cause = self.message
        self._emit_seq += 1
        envelope = Envelope(
            event_id=event_id or derived_event_id(cause.envelope.event_id, self._service, str(self._emit_seq)),
            event_type=payload.event_type,
            schema_version=payload.schema_version,
            occurred_at=occurred_at or self._clock.now(),
            producer=self._service,
            tenant_id=cause.envelope.tenant_id if tenant_id is _MISSING else tenant_id,
            correlation_id=correlation_id or cause.envelope.correlation_id,
            causation_id=cause.envelope.event_id,
        )
        target = stream or payload.stream
        self._events.append((target, encode(envelope, payload)))
        self.emitted.append(EmittedEvent(target, envelope, payload))
        return envelope

    def append(self, stream: str, fields: dict[str, str]) -> None:
        """Stage an entry exactly as given (not an event of this service: e.g. a dead
        letter for a message this service held back and now refuses)."""
        self._require_layer()
        self._events.append((stream, dict(fields)))

    # --- the commit plan ---------------------------------------------------------------

    def staged(self) -> tuple[list[list[str]], list[list[Any]], list[tuple[str, dict[str, str]]]]:
        """(version checks, writes, events) of everything kept so far."""
        if self._active:
            raise RuntimeError("a message is still being handled")
        checks = [[k, str(v)] for k, v in self._read_versions.items()]
        ops: list[list[Any]] = [
            [
                "put",
                k,
                str(v),
                d.model_dump_json() if isinstance(d, BaseModel) else json.dumps(d, separators=(",", ":")),
            ]
            for k, (v, d) in self._docs.items()
        ]
        ops.extend(coalesce_increments(self._ops))
        return checks, ops, list(self._events)
