"""The metering service: the allocation lifecycle in, usage records out.

Wiring only: each handler loads the allocation's span, asks ``spans`` what the fact
changes, and stages that ``Step`` (the span, the usage records, the open-spans index)
in the runtime's atomic commit. The rules — whole seconds, late and out-of-order
lifecycle events, adjustments — are in ``spans.py``; keys in ``store.py``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from prometheus_client import Gauge
from redis.asyncio import Redis

from minicloud_metering import spans, store
from minicloud_metering.spans import Step, usage_event_id, whole_seconds
from minicloud_shared.contracts import Message
from minicloud_shared.contracts.metering import MeteringTick, ReconcileSpan
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased
from minicloud_shared.contracts.topology import METERING_USAGE
from minicloud_shared.runtime import ServiceRuntime, Transaction

SERVICE = store.SERVICE
HOT_BATCH = 500  # lifecycle events read and committed at once (the hot path)
READINGS_PER_TICK = 2000  # spans read per tick at most; the rest are due at the next tick


async def _stage(tx: Transaction, allocation_id: str, step: Step) -> None:
    correlation = step.span.correlation_id if isinstance(step.span, spans.Span) else None
    for record in step.records:
        tx.emit(
            record,
            tenant_id=_tenant(step),
            event_id=usage_event_id(record.usage_id),
            occurred_at=record.end,
            correlation_id=correlation,
        )
    if step.closed:
        tx.zrem(store.OPEN, allocation_id)
    elif step.due is not None:
        tx.zadd(store.OPEN, allocation_id, step.due)
    if step.span is not None:
        await tx.put(store.span_key(allocation_id), step.span)


def _tenant(step: Step) -> str | None:
    return step.span.tenant_id if isinstance(step.span, spans.Span) else None


async def _place(tx: Transaction, tenant: str | None, e: AllocationPlaced) -> None:
    step = spans.place(await store.load_span(tx, e.allocation_id), tenant, e)
    if isinstance(step.span, spans.Span) and step.span.correlation_id is None:
        # The placement carries the correlation id of the request that submitted the
        # workload (scheduling passes it on): so do the span and its usage records.
        step.span = step.span.model_copy(update={"correlation_id": tx.message.envelope.correlation_id})
    await _stage(tx, e.allocation_id, step)


async def _release(tx: Transaction, e: AllocationReleased) -> None:
    await _stage(tx, e.allocation_id, spans.release(await store.load_span(tx, e.allocation_id), e))


async def on_placed(msg: Message[AllocationPlaced], tx: Transaction) -> None:
    await _place(tx, msg.envelope.tenant_id, msg.payload)


async def on_released(msg: Message[AllocationReleased], tx: Transaction) -> None:
    await _release(tx, msg.payload)


async def on_reconcile(msg: Message[ReconcileSpan], tx: Transaction) -> None:
    """The reconciler found lifecycle facts metering missed: apply them (idempotently)."""
    placed, released = msg.payload.facts()
    await _place(tx, msg.envelope.tenant_id, placed)
    if released is not None:
        await _release(tx, released)


async def on_tick(msg: Message[MeteringTick], tx: Transaction, *, interval: int) -> None:
    """Read every open span whose last record is ``interval`` old or more, up to the tick."""
    now = whole_seconds(msg.payload.at)
    for allocation_id in await store.due_spans(tx, now - interval, READINGS_PER_TICK):
        await _stage(tx, allocation_id, spans.read(await store.load_span(tx, allocation_id), now))


def span_of(msg: Message[Any]) -> list[str]:
    return [store.span_key(msg.payload.allocation_id)]


def build(runtime: ServiceRuntime) -> None:
    """Register the metering service's handlers on ``runtime``."""
    runtime.own_streams(METERING_USAGE)
    open_spans = Gauge(
        "minicloud_metering_open_spans",
        "Allocations being metered (spans not closed yet)",
        registry=runtime.metrics.registry,
    )

    async def count_open(redis: Redis) -> None:
        open_spans.set(int(await redis.zcard(store.OPEN)))

    runtime.metrics.refresh_with(count_open)  # at scrape time
    runtime.add_route(AllocationPlaced, on_placed, prefetch=span_of, batch_size=HOT_BATCH)
    runtime.add_route(AllocationReleased, on_released, prefetch=span_of)
    runtime.add_route(ReconcileSpan, on_reconcile, prefetch=span_of)
    runtime.add_route(MeteringTick, partial(on_tick, interval=runtime.settings.meter_interval_s))
    runtime.every(runtime.settings.tick_s, lambda now: MeteringTick(at=now))
