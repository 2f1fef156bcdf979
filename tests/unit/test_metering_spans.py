"""Metering's span rules, pure: no Redis, no runtime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from minicloud_metering import spans
from minicloud_metering.spans import ReleasedFirst, Span, whole_seconds
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased, GpuSlice

T0 = datetime(2026, 11, 1, 10, 0, 0, 700_000, tzinfo=UTC)  # a fraction of a second: floored


def placed(gpus: int = 2, at: datetime = T0) -> AllocationPlaced:
    return AllocationPlaced(
        allocation_id="alloc-1",
        workload_id="wl-1",
        sku="h100-80gb-sxm",
        region="eu-1",
        price_class="on_demand",
        gpus=[GpuSlice(host_id="h1", gpu_indices=list(range(gpus)))],
        gpu_count=gpus,
        started_at=at,
    )


def released(after_s: float) -> AllocationReleased:
    return AllocationReleased(
        allocation_id="alloc-1",
        workload_id="wl-1",
        reason="completed",
        gpus=[GpuSlice(host_id="h1", gpu_indices=[0, 1])],
        released_at=T0 + timedelta(seconds=after_s),
    )


def test_placement_opens_a_span_due_from_its_whole_second_start() -> None:
    step = spans.place(None, "acme", placed())
    assert isinstance(step.span, Span)
    assert step.span.start == step.span.read_to == whole_seconds(T0) == int(T0.timestamp())
    assert step.due == step.span.start
    assert not step.records
    assert not step.closed


def test_readings_then_release_record_every_gpu_second_once() -> None:
    span = spans.place(None, "acme", placed()).span
    start = whole_seconds(T0)
    first = spans.read(span, start + 60)
    assert [r.gpu_seconds for r in first.records] == [120]
    assert first.due == start + 60
    assert first.records[0].usage_id == "alloc-1:1"
    assert first.records[0].kind == "reading"
    again = spans.read(first.span, start + 60)  # the same tick twice: nothing
    assert again.span is None
    assert not again.records
    assert not again.closed
    end = spans.release(first.span, released(90.9))  # released_at floors to start + 91 (0.7 + 90.9)
    (final,) = end.records
    assert final.kind == "final"
    assert final.closes
    assert final.seq == 2
    assert final.gpu_seconds == 2 * 31
    assert final.allocation_seconds == 91
    assert isinstance(end.span, Span)
    assert end.span.recorded == 2 * 91
    assert end.closed
    assert spans.release(end.span, released(90.9)).records == []  # a second release: nothing
    assert spans.read(end.span, start + 500).closed  # a closed span leaves the index


def test_release_before_the_readings_caught_up_is_adjusted_not_rewritten() -> None:
    span = spans.place(None, "acme", placed()).span
    start = whole_seconds(T0)
    read = spans.read(span, start + 100)
    end = spans.release(read.span, released(40))  # it really ended at start + 40
    (adjustment,) = end.records
    assert adjustment.kind == "adjustment"
    assert adjustment.gpu_seconds == -2 * 60
    assert isinstance(end.span, Span)
    assert end.span.recorded == 2 * 40
    assert end.span.read_to == start + 40


def test_release_first_then_placement_records_the_whole_span_at_once() -> None:
    early = spans.release(None, released(30))
    assert isinstance(early.span, ReleasedFirst)
    assert not early.records
    assert spans.release(early.span, released(30)).span is None  # its duplicate: nothing
    whole = spans.place(early.span, "acme", placed())
    (final,) = whole.records
    assert final.kind == "final"
    assert final.gpu_seconds == 2 * 30
    assert whole.closed
    assert final.release_reason == "completed"


def test_release_stamped_before_the_start_records_zero_not_negative() -> None:
    span = spans.place(None, "acme", placed()).span
    (final,) = spans.release(span, released(-5)).records
    assert final.gpu_seconds == 0


def test_a_placement_seen_twice_changes_nothing() -> None:
    span = spans.place(None, "acme", placed()).span
    step = spans.place(span, "acme", placed())
    assert step.span is None
    assert not step.records


@pytest.mark.parametrize("seconds", [1, 59, 3600, 86_401])
def test_readings_at_any_cadence_sum_to_the_allocation(seconds: int) -> None:
    span: spans.Stored | None = spans.place(None, "acme", placed(gpus=3)).span
    start, total = whole_seconds(T0), 0
    for now in range(start + 7, start + seconds, 7):
        step = spans.read(span, now)
        total += sum(r.gpu_seconds for r in step.records)
        span = step.span or span
    step = spans.release(span, released(seconds - 0.7))
    total += sum(r.gpu_seconds for r in step.records)
    assert total == 3 * seconds == step.records[-1].allocation_seconds * 3
