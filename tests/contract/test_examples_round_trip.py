"""Contract tests: every registered payload type, built from the examples its fields
document, goes producer → real Redis stream → consumer decode unchanged, and a
consumer that knows an older shape still reads what a newer producer writes."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from minicloud_shared.clock import SystemClock
from minicloud_shared.contracts import Payload, catalog, decode, encode, envelope_for, registered_types

pytestmark = pytest.mark.broker


def example_of(cls: type[Payload]) -> Payload:
    values: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        assert field.examples, f"{cls.__name__}.{name} has no example"
        values[name] = field.examples[0]
    return cls.model_validate(values, strict=False)


def all_types() -> list[type[Payload]]:
    assert catalog.MODULES
    import tests.support.events  # noqa: F401  (the test payloads join the registry)

    return sorted(registered_types().values(), key=lambda c: c.event_type)


@pytest.mark.parametrize("cls", all_types(), ids=lambda c: c.event_type)
async def test_documented_example_survives_a_real_stream(redis_url: str, cls: type[Payload]) -> None:
    redis = Redis.from_url(redis_url)
    payload = example_of(cls)
    envelope = envelope_for(payload, producer="contract-test", occurred_at=SystemClock().now(), tenant_id="t-1")
    await redis.xadd(cls.stream, encode(envelope, payload))
    ((_, entries),) = await redis.xread({cls.stream: "0"})
    ((_, fields),) = entries
    message = decode(fields)
    assert message.payload == payload
    assert message.envelope == envelope
    await redis.aclose()


async def test_an_added_field_does_not_break_an_older_consumer(redis_url: str) -> None:
    from tests.support.events import Tick

    redis = Redis.from_url(redis_url)
    fields = encode(envelope_for(Tick(n=1), producer="p", occurred_at=SystemClock().now()), Tick(n=1))
    fields["data"] = fields["data"][:-1] + ',"gpu_model":"H200"}'
    await redis.xadd(Tick.stream, fields)
    ((_, ((_, raw),)),) = await redis.xread({Tick.stream: "0"})
    assert decode(raw).payload == Tick(n=1)
    await redis.aclose()
