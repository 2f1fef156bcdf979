"""Metering's decisions, pure: an allocation's span and the usage records it yields.

A span (one per allocation) holds what was already metered: ``read_to``, the instant
up to which usage records exist, and ``seq``, the last record's sequence number. Each
function here takes the span as stored and the fact that arrived, and returns a
``Step``: the span to store, the records to append and how the index of open spans
changes. The handlers (``app.py``) load, call these and stage the step in one atomic
commit, so a record is appended exactly once whatever the redeliveries and crashes.

Times are cut to whole seconds (floor) where they enter: a span is
``[floor(start), floor(end))``, so every record is a whole number of GPU-seconds and a
span can be split at any second without losing or inventing a fraction.

Late and out-of-order lifecycle facts:
- the release arrives first → a ``ReleasedFirst`` marker is kept; when the placement
  arrives, the whole span is recorded at once;
- the release says the allocation ended before time already covered by readings →
  an ``adjustment`` record removes the over-read time (history is appended to, never
  rewritten);
- a duplicate or a second release of a closed span → nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from minicloud_shared.contracts import derived_event_id
from minicloud_shared.contracts.metering import Unit, UsageKind, UsageRecorded, metered_unit
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased, PriceClass


def whole_seconds(t: datetime) -> int:
    """Epoch seconds of ``t``, floored (times are cut to whole seconds on the way in)."""
    return int(t.timestamp() // 1)


def at_second(s: int) -> datetime:
    return datetime.fromtimestamp(s, UTC)


def usage_event_id(usage_id: str) -> str:
    """The event id of a usage record: a function of the unit of usage alone."""
    return derived_event_id("usage", usage_id)


class ReleasedFirst(BaseModel):
    """The release of an allocation whose placement metering has not seen yet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["released_first"] = "released_first"
    end: int
    release_reason: str


class Span(BaseModel):
    """An allocation's metered time, in epoch seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allocation_id: str
    workload_id: str
    tenant_id: str | None
    sku: str
    region: str
    price_class: PriceClass
    gpus: int  # in ``unit``s: GPUs, thousandths of a GPU (a share), thousandths of a vCPU (CPU only)
    start: int
    read_to: int  # usage records exist for [start, read_to)
    seq: int = 0  # the last record's sequence number
    recorded: int = 0  # GPU-seconds recorded so far (net of adjustments)
    status: Literal["open", "closed"] = "open"
    end: int | None = None
    release_reason: str | None = None
    # The request that submitted the workload (its placement's correlation id): every
    # usage record of the span carries it, readings made on a tick too.
    correlation_id: str | None = None
    unit: Unit = "gpu"
    memory_mib: int | None = None  # CPU-only work: its memory (billed beside its CPU)
    mig_profile: str | None = None  # a MIG slice: its profile


Stored = Span | ReleasedFirst


def parse(doc: dict[str, object] | None) -> Stored | None:
    if doc is None:
        return None
    if doc.get("status") == "released_first":
        return ReleasedFirst.model_validate(doc)
    return Span.model_validate(doc)


@dataclass
class Step:
    """What one fact changes: the span to store (None: nothing), the usage records to
    append, and the open-spans index (``due``: read again from this second; ``closed``:
    no longer open)."""

    span: Stored | None = None
    records: list[UsageRecorded] = field(default_factory=list)
    due: int | None = None
    closed: bool = False


def _record(span: Span, kind: UsageKind, start: int, end: int, closes: bool) -> tuple[Span, UsageRecorded]:
    seq = span.seq + 1
    usage_id = f"{span.allocation_id}:{seq}"
    seconds = (end - start) * span.gpus
    signed = -seconds if kind == "adjustment" else seconds
    record = UsageRecorded(
        usage_id=usage_id,
        allocation_id=span.allocation_id,
        workload_id=span.workload_id,
        seq=seq,
        kind=kind,
        sku=span.sku,
        region=span.region,
        price_class=span.price_class,
        gpus=span.gpus,
        start=at_second(start),
        end=at_second(end),
        gpu_seconds=signed,
        closes=closes,
        allocation_seconds=(span.end - span.start) if closes and span.end is not None else None,
        release_reason=span.release_reason if closes else None,
        unit=span.unit,
        memory_mib=span.memory_mib,
        mig_profile=span.mig_profile,
    )
    return span.model_copy(update={"seq": seq, "recorded": span.recorded + signed}), record


def _close(span: Span) -> Step:
    """Record the rest of a span up to its end, or take back what was read past it."""
    end = span.end
    assert end is not None
    if end >= span.read_to:
        span, record = _record(span, "final", span.read_to, end, closes=True)
    else:
        span, record = _record(span, "adjustment", end, span.read_to, closes=True)
    return Step(span.model_copy(update={"read_to": end, "status": "closed"}), [record], closed=True)


def place(stored: Stored | None, tenant_id: str | None, e: AllocationPlaced) -> Step:
    """Open the allocation's span (or record it whole, if its release came first)."""
    if isinstance(stored, Span):
        return Step()  # placed twice (a copy under another id): the span exists
    start = whole_seconds(e.started_at)
    unit, quantity = metered_unit(e.gpu_count, e.gpu_milli, e.cpu_milli, e.mig_profile)
    span = Span(
        allocation_id=e.allocation_id,
        workload_id=e.workload_id,
        tenant_id=tenant_id,
        sku=e.sku,
        region=e.region,
        price_class=e.price_class,
        gpus=quantity,
        start=start,
        read_to=start,
        unit=unit,
        memory_mib=e.memory_mib if unit == "vcpu_milli" else None,
        mig_profile=e.mig_profile if unit == "mig" else None,
    )
    if isinstance(stored, ReleasedFirst):
        return _close(span.model_copy(update={"end": max(start, stored.end), "release_reason": stored.release_reason}))
    return Step(span, due=start)


def release(stored: Stored | None, e: AllocationReleased) -> Step:
    """Close the allocation's span at the instant it ended."""
    end = whole_seconds(e.released_at)
    if stored is None:
        return Step(ReleasedFirst(end=end, release_reason=e.reason))
    if not isinstance(stored, Span) or stored.status != "open":
        return Step()  # already closed (or released twice before its placement): nothing
    return _close(stored.model_copy(update={"end": max(end, stored.start), "release_reason": e.reason}))


def read(stored: Stored | None, now: int) -> Step:
    """A reading: record an open span up to ``now``."""
    if not isinstance(stored, Span) or stored.status != "open":
        return Step(closed=True)  # not open (any more): off the index
    if now <= stored.read_to:
        return Step()
    span, record = _record(stored, "reading", stored.read_to, now, closes=False)
    return Step(span.model_copy(update={"read_to": now}), [record], due=now)
