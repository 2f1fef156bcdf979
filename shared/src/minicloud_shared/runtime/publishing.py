"""Publishing from outside a handler, and the shape of a dead-letter entry."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from redis.asyncio import Redis

from minicloud_shared.clock import Clock, SystemClock
from minicloud_shared.contracts.envelope import Payload, encode, envelope_for, text
from minicloud_shared.contracts.runtime import DLQ_FIELD_PREFIX


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
