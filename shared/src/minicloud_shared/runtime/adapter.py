"""The FastStream adapter: one worker and one reclaimer subscriber per subscription.

- the **worker** reads new entries in bounded batches (``XREADGROUP COUNT n``) and
  hands them to the subscription's processor (or processes them inline when the
  runtime was not started through ``start``);
- the **reclaimer** takes over entries left pending longer than ``reclaim_idle_ms`` by
  a consumer that died or hung (``XAUTOCLAIM``).

FastStream never acknowledges anything itself (``AckPolicy.MANUAL`` and no ``ack()``):
the only XACK is the one inside the commit. Its body decoding is skipped: the runtime
decodes the plain stream fields itself (FastStream's batch parser re-encodes every
entry as JSON, which costs more than the whole commit).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from faststream import AckPolicy, Context
from faststream.message import StreamMessage
from faststream.redis import RedisBroker, StreamSub

from minicloud_shared.contracts.envelope import text
from minicloud_shared.contracts.topology import STREAMS
from minicloud_shared.runtime.routing import BatchOutcome, Entry, Subscription
from minicloud_shared.settings import Settings

Process = Callable[[Subscription, Sequence[Entry]], Awaitable[BatchOutcome]]
DeliveryCount = Callable[[Subscription, str], Awaitable[int | None]]


async def _parser(msg: Any) -> StreamMessage[Any]:
    return StreamMessage(raw_message=msg, body=b"", content_type="application/json")


async def _decoder(msg: StreamMessage[Any]) -> None:
    return None


def build_broker(
    service: str,
    settings: Settings,
    consumer_name: str,
    subs: Sequence[Subscription],
    log: structlog.stdlib.BoundLogger,
    process: Process,
    delivery_count: DeliveryCount,
    on_reclaimed: Callable[[Subscription], None],
) -> RedisBroker:
    broker = RedisBroker(
        settings.redis_url,
        logger=log,
        log_level=10,  # FastStream's per-message lines at DEBUG: they cost ~20% throughput
        socket_timeout=max(5.0, settings.block_ms / 1000 + 5),
    )
    for sub in subs:
        types = ", ".join(sorted(sub.routes))
        worker = broker.subscriber(
            stream=StreamSub(
                sub.stream,
                group=sub.group,
                consumer=consumer_name,
                batch=True,
                max_records=sub.batch_size,
                polling_interval=settings.block_ms,
            ),
            ack_policy=AckPolicy.MANUAL,
            parser=_parser,
            decoder=_decoder,
            title=f"{sub.stream}:{sub.group}",
            description=f"{service} consumes {types} from {sub.stream} (group {sub.group}).",
        )
        worker(_worker(sub, process))
        reclaimer = broker.subscriber(
            stream=StreamSub(
                sub.stream,
                group=sub.group,
                consumer=f"{consumer_name}-reclaim",
                min_idle_time=settings.reclaim_idle_ms,
                polling_interval=settings.reclaim_poll_ms,
            ),
            ack_policy=AckPolicy.MANUAL,
            parser=_parser,
            decoder=_decoder,
            include_in_schema=False,
        )
        reclaimer(_reclaimer(sub, process, delivery_count, on_reclaimed))
    # The streams this service produces, declared for the AsyncAPI document (events
    # are published by the commit script, not through these publishers).
    for spec in STREAMS.values():
        if spec.owner == service:
            broker.publisher(stream=spec.name, title=spec.name, description=spec.description)
    return broker


def _worker(sub: Subscription, process: Process) -> Callable[..., Awaitable[None]]:
    async def consume(message: StreamMessage[Any] = Context("message")) -> None:
        raw = message.raw_message
        entries = [Entry(text(eid), fields, 1) for eid, fields in zip(raw["message_ids"], raw["data"], strict=True)]
        if sub.queue is None:  # not started through start(): process inline
            await process(sub, entries)
        else:
            await sub.queue.put(entries)

    consume.__name__ = f"on_{sub.stream.replace('.', '_')}"
    return consume


def _reclaimer(
    sub: Subscription, process: Process, delivery_count: DeliveryCount, on_reclaimed: Callable[[Subscription], None]
) -> Callable[..., Awaitable[None]]:
    async def reclaim(message: StreamMessage[Any] = Context("message")) -> None:
        raw = message.raw_message
        entry_id = text(raw["message_ids"][0])
        count = await delivery_count(sub, entry_id)
        if count is None:  # acknowledged meanwhile: nothing to do
            return
        on_reclaimed(sub)
        await process(sub, [Entry(entry_id, raw["data"], count)])

    reclaim.__name__ = f"reclaim_{sub.stream.replace('.', '_')}"
    return reclaim
