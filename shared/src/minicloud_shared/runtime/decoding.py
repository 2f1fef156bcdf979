"""Turning a stream entry into what the runtime needs to handle it: the decoded
message and its route, or why it is ignored or poison."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from minicloud_shared.contracts.envelope import Message, PoisonMessage, decode_envelope, decode_payload, text
from minicloud_shared.contracts.runtime import DLQ_FIELD_PREFIX, DeadLettered
from minicloud_shared.runtime.routing import Entry, Route, Subscription


@dataclass(slots=True)
class Item:
    entry: Entry
    message: Message[Any] | None = None
    route: Route | None = None
    poison: str | None = None
    event_id: str | None = None
    event_type: str | None = None


def decode_entry(sub: Subscription, entry: Entry) -> Item:
    if sub.dead_letters:
        return _decode_dead_letter(sub, entry)
    item = Item(entry)
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


def _decode_dead_letter(sub: Subscription, entry: Entry) -> Item:
    item = Item(entry)
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


def entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def utf8(fields: Mapping[bytes, bytes]) -> bool:
    try:
        for k, v in fields.items():
            text(k)
            text(v)
    except UnicodeDecodeError:
        return False
    return True


def flat(fields: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        out.append(k)
        out.append(v)
    return out
