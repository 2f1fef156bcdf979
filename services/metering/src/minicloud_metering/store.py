"""Metering's keys and raw reads: every ``mc:metering:`` key is named here."""

from __future__ import annotations

from typing import Any

from minicloud_metering.spans import Stored, parse
from minicloud_shared.contracts import text
from minicloud_shared.runtime import Transaction

SERVICE = "metering"
PREFIX = f"mc:{SERVICE}:"
OPEN = PREFIX + "open"  # open allocation id -> read_to (epoch s): which spans are due a reading


def span_key(allocation_id: str) -> str:
    return f"{PREFIX}span:{allocation_id}"


async def load_span(tx: Transaction, allocation_id: str) -> Stored | None:
    return parse(await tx.get(span_key(allocation_id)))


async def due_spans(tx: Transaction, read_before: int, limit: int) -> list[str]:
    """Open spans whose last record ends at ``read_before`` or earlier (oldest first),
    read ahead into the transaction in one round trip."""
    due: Any = await tx.redis.zrangebyscore(OPEN, "-inf", read_before, start=0, num=limit)
    ids = [text(d) for d in due]
    await tx.prefetch([span_key(i) for i in ids])
    return ids
