"""Contracts of the runtime itself: what a dead-letter entry carries."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from minicloud_shared.contracts.envelope import Payload

# Dead-letter entries keep every field of the original entry (so an operator can
# re-publish it as it was) and add these, all prefixed ``dlq_``.
DLQ_FIELD_PREFIX = "dlq_"


class DeadLetter(BaseModel):
    """Why and where a message was dead-lettered (the ``dlq_*`` fields of a DLQ entry)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dlq_reason: str = Field(
        description="Why it was given up on.", examples=["invalid payload: gpus: Input should be > 0"]
    )
    dlq_kind: str = Field(
        description=(
            "poison (undecodable or invalid: never retried), refused (the handler ruled it must never take"
            " effect, e.g. usage charged to a tenant that does not own the allocation) or failed (handler"
            " failed on every delivery)."
        ),
        examples=["poison"],
    )
    dlq_stream: str = Field(description="The stream it was read from.", examples=["mc.inventory.commands"])
    dlq_group: str = Field(description="The consumer group that gave up on it.", examples=["inventory"])
    dlq_entry_id: str = Field(description="Its entry id in that stream.", examples=["1764063000000-0"])
    dlq_delivery_count: int = Field(description="Deliveries when it was given up on.", examples=[5])
    dlq_consumer: str = Field(description="The consumer that dead-lettered it.", examples=["inventory-host-12-ab12cd"])
    dlq_at: str = Field(description="When, UTC (ISO 8601).", examples=["2026-11-25T09:30:00Z"])


class DeadLettered(Payload):
    """What a follower of a dead-letter stream is handed (``ServiceRuntime.on_dead_letters``):
    why the owner gave up on a message, with the original envelope beside it and its
    payload as it was, undecoded (it may be what could not be decoded)."""

    event_type: ClassVar[str] = "minicloud.runtime.dead_lettered"
    stream: ClassVar[str] = ""  # read from the dead-letter streams it is registered on

    original_type: str = Field(
        description="The dead-lettered message's type.", examples=["minicloud.billing.add_credit"]
    )
    reason: str = Field(
        description="Why it was given up on.",
        examples=["TypeError: can't compare offset-naive and offset-aware datetimes"],
    )
    kind: str = Field(description="poison, refused or failed (see DeadLetter.dlq_kind).", examples=["failed"])
    group: str = Field(description="The consumer group that gave up on it.", examples=["billing"])
    delivery_count: int = Field(description="Deliveries when it was given up on.", examples=[5])
    data: str = Field(description="The original payload, as sent (JSON text).", examples=['{"amount": "10.00"}'])
