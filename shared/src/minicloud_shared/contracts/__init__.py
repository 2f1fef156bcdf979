"""Event contracts: the envelope, the wire format, stream names and payload types."""

from minicloud_shared.contracts.envelope import (
    Envelope,
    Message,
    Payload,
    PoisonMessage,
    decode,
    decode_envelope,
    decode_payload,
    derived_event_id,
    encode,
    envelope_for,
    new_event_id,
    payload_type,
    register,
    registered_types,
    text,
    upcaster,
)

__all__ = [
    "Envelope",
    "Message",
    "Payload",
    "PoisonMessage",
    "decode",
    "decode_envelope",
    "decode_payload",
    "derived_event_id",
    "encode",
    "envelope_for",
    "new_event_id",
    "payload_type",
    "register",
    "registered_types",
    "text",
    "upcaster",
]
