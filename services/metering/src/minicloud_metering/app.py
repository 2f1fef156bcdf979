"""The metering service: the allocation lifecycle in, usage records out.

One span per allocation (``mc:metering:span:<allocation>``, a versioned record) holds
what was already metered: ``read_to``, the instant up to which usage records exist,
and ``seq``, the last record's sequence number. Each lifecycle event or reading moves
them forward in the same atomic commit that appends the usage record, so a record is
appended exactly once whatever the redeliveries, crashes and replicas.

Times are cut to whole seconds (floor) where they enter: a span of an allocation is
``[floor(start), floor(end))``, so every record is a whole number of GPU-seconds and a
span can be split at any second without losing or inventing a fraction.

Late and out-of-order lifecycle events:
- the release arrives first → the span is kept as released; when the placement
  arrives, the whole span is recorded at once;
- the release says the allocation ended before time already covered by readings
  (the release reached metering late) → an ``adjustment`` record removes the
  over-read time: history is appended to, never rewritten;
- a duplicate or a second release of a closed span → nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from minicloud_shared.contracts import Message, derived_event_id, text
from minicloud_shared.contracts.metering import MeteringTick, ReconcileSpan, UsageKind, UsageRecorded
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased
from minicloud_shared.contracts.topology import METERING_USAGE
from minicloud_shared.runtime import ServiceRuntime, Transaction

SERVICE = "metering"
OPEN = "mc:metering:open"  # open allocation id -> read_to (epoch s): which spans are due a reading
HOT_BATCH = 500  # lifecycle events read and committed at once (the hot path)
READINGS_PER_TICK = 2000  # spans read per tick at most; the rest are due at the next tick

log = structlog.get_logger(service=SERVICE)


def span_key(allocation_id: str) -> str:
    return f"mc:metering:span:{allocation_id}"


def whole_seconds(t: datetime) -> int:
    """Epoch seconds of ``t``, floored (times are cut to whole seconds on the way in)."""
    return int(t.timestamp() // 1)


def at_second(s: int) -> datetime:
    return datetime.fromtimestamp(s, UTC)


def usage_event_id(usage_id: str) -> str:
    """The event id of a usage record: a function of the unit of usage alone."""
    return derived_event_id("usage", usage_id)


def _record(tx: Transaction, span: dict[str, Any], kind: UsageKind, start: int, end: int, closes: bool) -> None:
    """Append the span's next usage record, ``[start, end)`` (removed again if an adjustment)."""
    span["seq"] += 1
    usage_id = f"{span['allocation_id']}:{span['seq']}"
    seconds = (end - start) * span["gpus"]
    span["recorded"] = span.get("recorded", 0) + (-seconds if kind == "adjustment" else seconds)
    tx.emit(
        UsageRecorded(
            usage_id=usage_id,
            allocation_id=span["allocation_id"],
            workload_id=span["workload_id"],
            seq=span["seq"],
            kind=kind,
            sku=span["sku"],
            region=span["region"],
            price_class=span["price_class"],
            gpus=span["gpus"],
            start=at_second(start),
            end=at_second(end),
            gpu_seconds=-seconds if kind == "adjustment" else seconds,
            closes=closes,
            allocation_seconds=(span["end"] - span["start"]) if closes else None,
            release_reason=span.get("release_reason") if closes else None,
        ),
        tenant_id=span["tenant_id"],
        event_id=usage_event_id(usage_id),
        occurred_at=at_second(end),
    )


def _close(tx: Transaction, span: dict[str, Any]) -> None:
    """Record the rest of a span up to its end, or take back what was read past it."""
    end, read_to = span["end"], span["read_to"]
    if end >= read_to:
        _record(tx, span, "final", read_to, end, closes=True)
    else:
        _record(tx, span, "adjustment", end, read_to, closes=True)
    span["read_to"] = end
    span["status"] = "closed"
    tx.zrem(OPEN, span["allocation_id"])


async def place(tx: Transaction, tenant: str | None, e: AllocationPlaced) -> None:
    """Open the allocation's span (or record it whole, if its release came first)."""
    key = span_key(e.allocation_id)
    span = await tx.get(key)
    if span is not None and span["status"] != "released_first":
        return  # placed twice (a copy under another id): the span exists
    start = whole_seconds(e.started_at)
    opened = {
        "allocation_id": e.allocation_id,
        "workload_id": e.workload_id,
        "tenant_id": tenant,
        "sku": e.sku,
        "region": e.region,
        "price_class": e.price_class,
        "gpus": e.gpu_count,
        "start": start,
        "read_to": start,
        "seq": 0,
        "recorded": 0,
        "status": "open",
    }
    if span is not None:  # its release came first: record the whole span now
        opened.update(end=max(start, span["end"]), release_reason=span["release_reason"])
        _close(tx, opened)
    else:
        tx.zadd(OPEN, e.allocation_id, start)
    await tx.put(key, opened)


async def release(tx: Transaction, e: AllocationReleased) -> None:
    """Close the allocation's span at the instant it ended."""
    key = span_key(e.allocation_id)
    span = await tx.get(key)
    end = whole_seconds(e.released_at)
    if span is None:
        log.info("release before placement; span kept until the placement arrives", allocation_id=e.allocation_id)
        await tx.put(key, {"status": "released_first", "end": end, "release_reason": e.reason})
        return
    if span["status"] != "open":
        return  # already closed: a second release of the same allocation changes nothing
    span = {**span, "end": max(end, span["start"]), "release_reason": e.reason}
    _close(tx, span)
    await tx.put(key, span)


def build(runtime: ServiceRuntime) -> None:
    """Register the metering service's handlers on ``runtime``."""
    runtime.own_streams(METERING_USAGE)
    interval = runtime.settings.meter_interval_s

    def span_of(msg: Message[Any]) -> list[str]:
        return [span_key(msg.payload.allocation_id)]

    @runtime.on(AllocationPlaced, prefetch=span_of, batch_size=HOT_BATCH)
    async def on_placed(msg: Message[AllocationPlaced], tx: Transaction) -> None:
        await place(tx, msg.envelope.tenant_id, msg.payload)

    @runtime.on(AllocationReleased, prefetch=span_of)
    async def on_released(msg: Message[AllocationReleased], tx: Transaction) -> None:
        await release(tx, msg.payload)

    @runtime.on(ReconcileSpan, prefetch=span_of)
    async def on_reconcile(msg: Message[ReconcileSpan], tx: Transaction) -> None:
        """The reconciler found lifecycle facts metering missed: apply them (idempotently)."""
        c = msg.payload
        placed, released = c.facts()
        await place(tx, msg.envelope.tenant_id, placed)
        if released is not None:
            await release(tx, released)

    @runtime.on(MeteringTick)
    async def on_tick(msg: Message[MeteringTick], tx: Transaction) -> None:
        """Read every open span whose last record is ``interval`` old or more, up to the tick."""
        now = whole_seconds(msg.payload.at)
        due: Any = await tx.redis.zrangebyscore(OPEN, "-inf", now - interval, start=0, num=READINGS_PER_TICK)
        ids = [text(d) for d in due]
        await tx.prefetch([span_key(i) for i in ids])
        for allocation_id in ids:
            key = span_key(allocation_id)
            span = await tx.get(key)
            if span is None or span["status"] != "open":
                tx.zrem(OPEN, allocation_id)
                continue
            if now <= span["read_to"]:
                continue
            span = dict(span)
            _record(tx, span, "reading", span["read_to"], now, closes=False)
            span["read_to"] = now
            tx.zadd(OPEN, allocation_id, now)
            await tx.put(key, span)

    runtime.every(runtime.settings.tick_s, lambda now: MeteringTick(at=now))
