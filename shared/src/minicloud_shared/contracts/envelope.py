"""The event envelope and its wire format.

Every message on every stream is an :class:`Envelope` (metadata) plus a payload (a
:class:`Payload` subclass, one per event or command type). On the wire an entry is a
flat map of plain string fields, readable by ``redis-cli XRANGE`` or any client in any
language — not FastStream's opaque binary ``__data__`` field. Attribute names follow
CloudEvents 1.0 where one fits (``id``, ``type``, ``source``, ``time``, ``specversion``,
``datacontenttype``, ``data``) and CloudEvents-style lowercase extensions otherwise
(``schemaversion``, ``tenantid``, ``correlationid``, ``causationid``).

Strict when sent: payload models forbid unknown fields and coerce nothing, and
:func:`encode` refuses naive datetimes. Tolerant when read: :func:`decode` drops fields
it does not know (a newer producer may have added some), coerces JSON types, and runs
the upcasters of older schema versions.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"

# The wire field names, defined once.
F_SPEC = "specversion"
F_ID = "id"
F_TYPE = "type"
F_SCHEMA_VERSION = "schemaversion"
F_SOURCE = "source"
F_TIME = "time"
F_TENANT = "tenantid"
F_CORRELATION = "correlationid"
F_CAUSATION = "causationid"
F_CONTENT_TYPE = "datacontenttype"
F_DATA = "data"


def new_event_id() -> str:
    """A fresh random event id (UUID4, 36 characters)."""
    return str(uuid.uuid4())


_DERIVED_NS = uuid.UUID("6f1c1f52-6d1b-4b7e-9a43-4c7d0f1f2a10")


def derived_event_id(*parts: str) -> str:
    """A deterministic event id (UUID5) naming a unit of work by its parts.

    Used for events emitted while handling another event (parts: the cause's id, the
    emitting service and the emit's position), and for ids that name a unit of usage
    (parts: allocation id and sequence number): whoever computes it again, after a
    crash or a retry, gets the same id, and downstream deduplication absorbs the copy.
    """
    return str(uuid.uuid5(_DERIVED_NS, "\x1f".join(parts)))


class Envelope(BaseModel):
    """Metadata every message carries, whatever its type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(
        description="Unique id of this event, generated once at its source and kept across retries; "
        "consumers deduplicate on it.",
        examples=["0b7e4b52-3f7e-4c47-8d1a-4c1b8f0e9a11"],
        min_length=1,
        max_length=128,
    )
    event_type: str = Field(
        description="Stable type name: minicloud.<owner>.<name>. Never a module path.",
        examples=["minicloud.inventory.host_registered"],
        pattern=r"^[a-z0-9_.\-]+$",
    )
    schema_version: int = Field(description="Version of the payload schema.", examples=[1], ge=1)
    occurred_at: datetime = Field(description="When it happened (event time), UTC.", examples=["2026-11-25T09:30:00Z"])
    producer: str = Field(description="The service that produced it.", examples=["inventory"], min_length=1)
    tenant_id: str | None = Field(None, description="The tenant it concerns, where it has one.", examples=["t-acme"])
    correlation_id: str = Field(
        description="Id shared by everything caused by one original request.",
        examples=["req-5f0c2a"],
        min_length=1,
    )
    causation_id: str | None = Field(
        None, description="event_id of the message that caused this one, if any.", examples=[None]
    )


class Payload(BaseModel):
    """Base of every event and command payload.

    Subclasses set ``event_type`` (stable wire name), ``schema_version`` and
    ``stream`` (where it is published) as class variables, and declare their fields
    with a description and an example each.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    stream: ClassVar[str]

    # Messages read from a stream are instances of a tolerant twin of their class (see
    # reader_of): equal to the contract's own instance with the same fields.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Payload):
            return NotImplemented
        return self.event_type == other.event_type and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((self.event_type, *self.__dict__.values()))


P = TypeVar("P", bound=Payload)


@dataclass(frozen=True, slots=True)
class Message(Generic[P]):
    """A decoded message: its envelope and its typed payload."""

    envelope: Envelope
    payload: P


class PoisonMessage(Exception):
    """A stream entry that can never be handled as it stands (undecodable or invalid).

    It is dead-lettered at once: redelivering it cannot help.
    """

    def __init__(self, reason: str, event_id: str | None = None, event_type: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id
        self.event_type = event_type


# --- the type registry -------------------------------------------------------------

_REGISTRY: dict[str, type[Payload]] = {}
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register(cls: type[P]) -> type[P]:
    """Class decorator: make a payload type known to :func:`decode`."""
    existing = _REGISTRY.get(cls.event_type)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"event type {cls.event_type!r} registered twice ({existing} and {cls})")
    _REGISTRY[cls.event_type] = cls
    return cls


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator: turn a payload dict of ``from_version`` into ``from_version + 1``."""

    def deco(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return deco


def has_upcaster(event_type: str, from_version: int) -> bool:
    """Whether an upcaster turns ``from_version`` of ``event_type`` into the next version."""
    return (event_type, from_version) in _UPCASTERS


class NoUpcaster(LookupError):
    """No upcaster turns this schema version of an event type into the next."""


def upcast(event_type: str, data: dict[str, Any], from_version: int, to_version: int) -> dict[str, Any]:
    """``data``, written at ``from_version``, as ``to_version`` reads it (the upcasters in
    turn); ``NoUpcaster`` names the version that has none."""
    version = from_version
    while version < to_version:
        up = _UPCASTERS.get((event_type, version))
        if up is None:
            raise NoUpcaster(f"no upcaster from schema version {version} of {event_type}")
        data = up(data)
        version += 1
    return data


def registered_types() -> dict[str, type[Payload]]:
    return dict(_REGISTRY)


def payload_type(event_type: str) -> type[Payload] | None:
    return _REGISTRY.get(event_type)


def envelope_for(
    payload: Payload,
    *,
    producer: str,
    occurred_at: datetime,
    event_id: str | None = None,
    tenant_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> Envelope:
    """The envelope of a new message carrying ``payload`` (a fresh id unless given)."""
    eid = event_id or new_event_id()
    return Envelope(
        event_id=eid,
        event_type=payload.event_type,
        schema_version=payload.schema_version,
        occurred_at=occurred_at,
        producer=producer,
        tenant_id=tenant_id,
        correlation_id=correlation_id or eid,
        causation_id=causation_id,
    )


# --- wire format -------------------------------------------------------------------


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware (UTC)")
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def encode(envelope: Envelope, payload: Payload) -> dict[str, str]:
    """The stream entry fields of a message (strict: the payload type must match)."""
    if envelope.event_type != payload.event_type:
        raise ValueError(f"envelope type {envelope.event_type!r} != payload type {payload.event_type!r}")
    if envelope.schema_version != payload.schema_version:
        raise ValueError("envelope schema_version does not match the payload's")
    fields = {
        F_SPEC: SPEC_VERSION,
        F_ID: envelope.event_id,
        F_TYPE: envelope.event_type,
        F_SCHEMA_VERSION: str(envelope.schema_version),
        F_SOURCE: envelope.producer,
        F_TIME: _iso(envelope.occurred_at),
        F_CORRELATION: envelope.correlation_id,
        F_CONTENT_TYPE: CONTENT_TYPE,
        F_DATA: payload.model_dump_json(),
    }
    if envelope.tenant_id is not None:
        fields[F_TENANT] = envelope.tenant_id
    if envelope.causation_id is not None:
        fields[F_CAUSATION] = envelope.causation_id
    return fields


def text(value: bytes | str) -> str:
    """A Redis reply as text (replies are bytes unless the client decodes them)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def decode_envelope(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> tuple[Envelope, bytes | str]:
    """The envelope of a raw entry and its raw ``data``; :class:`PoisonMessage` if unusable.

    This is the hot path of every consumer: only the fields the envelope needs are
    decoded (validating the model is cheaper than building it unvalidated).
    """
    if fields and not isinstance(next(iter(fields)), bytes):
        fields = {k.encode(): v.encode() for k, v in fields.items()}  # type: ignore[union-attr]
    f: Mapping[bytes, bytes] = fields  # type: ignore[assignment]
    try:
        raw_id, raw_type, data = f.get(b"id"), f.get(b"type"), f.get(b"data")
        if raw_id is None or raw_type is None or data is None:
            missing = [n for n, v in ((F_ID, raw_id), (F_TYPE, raw_type), (F_DATA, data)) if v is None]
            raise PoisonMessage(
                f"not a minicloud event: missing field(s) {', '.join(missing)}",
                event_id=_opt(raw_id),
                event_type=_opt(raw_type),
            )
        event_id = raw_id.decode()
        version = f.get(b"schemaversion")
        source, tenant = f.get(b"source"), f.get(b"tenantid")
        correlation, causation = f.get(b"correlationid"), f.get(b"causationid")
        envelope = Envelope(
            event_id=event_id,
            event_type=raw_type.decode(),
            schema_version=version.decode() if version is not None else 1,
            occurred_at=f.get(b"time", b"").decode(),
            producer=source.decode() if source else "unknown",
            tenant_id=tenant.decode() if tenant else None,
            correlation_id=correlation.decode() if correlation else event_id,
            causation_id=causation.decode() if causation else None,
        )
        if envelope.occurred_at.tzinfo is None:
            raise ValueError("time has no timezone")
    except PoisonMessage:
        raise
    except (ValueError, UnicodeDecodeError, ValidationError) as exc:
        raise PoisonMessage(
            f"bad envelope: {_short(exc)}", event_id=_opt(f.get(b"id")), event_type=_opt(f.get(b"type"))
        ) from exc
    return envelope, data


def _opt(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    try:
        return text(value)
    except UnicodeDecodeError:
        return repr(value)


_READERS: dict[type[Payload], type[Payload]] = {}


def reader_of(cls: type[P]) -> type[P]:
    """The tolerant reading twin of a payload type: a subclass that ignores unknown
    fields and coerces JSON types, validated from JSON text in one pass."""
    reader = _READERS.get(cls)
    if reader is None:
        reader = type(
            cls.__name__,
            (cls,),
            {
                "model_config": ConfigDict(frozen=True, extra="ignore", strict=False),
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
            },
        )
        _READERS[cls] = reader
    return reader  # type: ignore[return-value]


def decode_payload(envelope: Envelope, data: bytes | str, cls: type[P]) -> P:
    """Validate ``data`` as ``cls`` tolerantly (unknown fields dropped, upcasters run)."""
    if envelope.schema_version >= cls.schema_version:
        # Same or newer producer: read what we know, drop the rest, in one pass.
        try:
            read = reader_of(cls).model_validate_json(data)
        except ValidationError as exc:
            raise PoisonMessage(
                f"invalid {envelope.event_type}: {_short(exc)}", envelope.event_id, envelope.event_type
            ) from exc
        return read
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise PoisonMessage(f"data is not JSON: {exc}", envelope.event_id, envelope.event_type) from exc
    if not isinstance(obj, dict):
        raise PoisonMessage("data is not a JSON object", envelope.event_id, envelope.event_type)
    try:
        obj = upcast(envelope.event_type, obj, envelope.schema_version, cls.schema_version)
    except NoUpcaster as exc:
        raise PoisonMessage(str(exc), envelope.event_id, envelope.event_type) from exc
    known = cls.model_fields.keys()
    obj = {k: v for k, v in obj.items() if k in known}
    try:
        return cls.model_validate(obj, strict=False)
    except ValidationError as exc:
        raise PoisonMessage(
            f"invalid {envelope.event_type}: {_short(exc)}", envelope.event_id, envelope.event_type
        ) from exc


def decode(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Message[Payload]:
    """Decode a raw entry whose type is in the registry."""
    envelope, data = decode_envelope(fields)
    cls = _REGISTRY.get(envelope.event_type)
    if cls is None:
        raise PoisonMessage(f"unknown event type {envelope.event_type!r}", envelope.event_id, envelope.event_type)
    return Message(envelope, decode_payload(envelope, data, cls))


def _short(exc: Exception, limit: int = 500) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
        text = "; ".join(parts)
    else:
        text = str(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"
