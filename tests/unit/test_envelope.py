"""The envelope and the wire format: strict when sent, tolerant when read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import ClassVar

import pytest
from pydantic import BaseModel, Field, ValidationError

from minicloud_shared.contracts import (
    Payload,
    PoisonMessage,
    decode,
    derived_event_id,
    encode,
    envelope_for,
    register,
    upcaster,
)
from tests.support.events import Tick

T0 = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


def fields_of(payload: Payload, **kw: object) -> dict[str, str]:
    return encode(envelope_for(payload, producer="test", occurred_at=T0, **kw), payload)


def test_round_trip_keeps_envelope_and_payload() -> None:
    tick = Tick(n=3, account="b")
    env = envelope_for(tick, producer="test", occurred_at=T0, tenant_id="t-1", correlation_id="c-1")
    msg = decode(encode(env, tick))
    assert msg.envelope == env
    assert msg.payload == tick
    assert isinstance(msg.payload, Tick)


def test_wire_fields_are_plain_strings_with_cloudevents_names() -> None:
    fields = fields_of(Tick(n=1), tenant_id="t-9")
    assert fields["specversion"] == "1.0"
    assert fields["type"] == "minicloud.test.tick"
    assert fields["time"] == "2026-11-25T09:30:00Z"
    assert fields["tenantid"] == "t-9"
    assert json.loads(fields["data"]) == {"n": 1, "account": "a", "fail": False, "sleep_s": 0.0}
    assert all(isinstance(v, str) for v in fields.values())


def test_strict_when_sent() -> None:
    with pytest.raises(ValidationError):
        Tick(n="1")  # no coercion on the sending side
    with pytest.raises(ValidationError):
        Tick(n=1, tenant_id="t-1")  # type: ignore[call-arg]  # unknown fields refused
    with pytest.raises(ValidationError):
        Tick(n=-1)
    naive = envelope_for(Tick(n=1), producer="test", occurred_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone"):
        encode(naive, Tick(n=1))


def test_tolerant_when_read() -> None:
    fields = fields_of(Tick(n=1))
    fields["data"] = json.dumps({"n": "7", "account": "x", "added_by_a_newer_producer": True})
    fields["futureattribute"] = "ignored"
    msg = decode(fields)
    assert msg.payload == Tick(n=7, account="x")


def test_bytes_fields_as_redis_returns_them() -> None:
    fields = {k.encode(): v.encode() for k, v in fields_of(Tick(n=5)).items()}
    assert decode(fields).payload == Tick(n=5)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f.pop("data"), "missing field(s) data"),
        (lambda f: f.pop("id"), "missing field(s) id"),
        (lambda f: f.update(data="{not json"), "invalid minicloud.test.tick"),
        (lambda f: f.update(data='{"n": -1}'), "invalid minicloud.test.tick"),
        (lambda f: f.update(data="[1, 2]"), "invalid minicloud.test.tick"),
        (lambda f: f.update(time="yesterday"), "bad envelope"),
        (lambda f: f.update(time="2026-01-01T00:00:00"), "bad envelope: time has no timezone"),
        (lambda f: f.update(type="Not A Type!"), "bad envelope"),
        (lambda f: f.update(type="minicloud.test.unknown"), "unknown event type"),
        (lambda f: f.update(schemaversion="zero"), "bad envelope"),
    ],
)
def test_poison_is_recognised_with_a_reason(mutate: object, reason: str) -> None:
    fields = fields_of(Tick(n=1))
    mutate(fields)
    with pytest.raises(PoisonMessage, match=reason.replace("(", r"\(").replace(")", r"\)")):
        decode(fields)


@register
class Renamed(Payload):
    """Version 3 of a payload whose field was renamed twice."""

    event_type: ClassVar[str] = "minicloud.test.renamed"
    schema_version: ClassVar[int] = 3
    stream: ClassVar[str] = "mc.testsvc.renamed"

    gpu_count: int = Field(description="GPUs", examples=[8])


@upcaster("minicloud.test.renamed", 1)
def _v1_to_v2(data: dict[str, object]) -> dict[str, object]:
    return {"gpus": data["n_gpus"]}


@upcaster("minicloud.test.renamed", 2)
def _v2_to_v3(data: dict[str, object]) -> dict[str, object]:
    return {"gpu_count": data["gpus"]}


def test_old_versions_are_upcast_in_a_loop() -> None:
    fields = fields_of(Renamed(gpu_count=1))
    fields["schemaversion"] = "1"
    fields["data"] = json.dumps({"n_gpus": 8})
    assert decode(fields).payload == Renamed(gpu_count=8)
    fields["schemaversion"] = "2"
    fields["data"] = json.dumps({"gpus": 4})
    assert decode(fields).payload == Renamed(gpu_count=4)


def test_a_version_without_upcaster_is_poison() -> None:
    fields = fields_of(Tick(n=1))
    fields["type"] = "minicloud.test.renamed"
    fields["schemaversion"] = "0"
    with pytest.raises(PoisonMessage):
        decode(fields)


def test_derived_ids_are_deterministic_and_distinct() -> None:
    a = derived_event_id("alloc-1", "metering", "7")
    assert a == derived_event_id("alloc-1", "metering", "7")
    assert a != derived_event_id("alloc-1", "metering", "8")
    assert a != derived_event_id("alloc-17", "metering", "")  # parts are separated, not concatenated


def test_every_registered_field_is_documented() -> None:
    from minicloud_shared.contracts import catalog, registered_types
    from minicloud_shared.contracts.envelope import Envelope
    from minicloud_shared.contracts.runtime import DeadLetter

    assert catalog.MODULES
    models: list[type[BaseModel]] = [Envelope, DeadLetter, *registered_types().values()]
    undocumented = [
        f"{m.__name__}.{name}"
        for m in models
        for name, f in m.model_fields.items()
        if not f.description or not f.examples
    ]
    assert undocumented == []
