"""Usage through metering and billing, exactly once, on one Redis.

- ``pipeline.usage_events_per_s``: a backlog of allocation lifecycle events (placed and
  released), written before the services start, drained by metering (spans to usage
  records) and billing (rating onto invoice lines), each service a process of its own
  as in production; on Redis' clock from the first usage record to the last charge.
  Baseline: raw redis-py XREADGROUP + XACK of the same number of preloaded entries on
  the same Redis, in the same run. Goals: >= 10,000 events/s and ratio >= 0.3.
- ``pipeline.usage_events_per_s@2billing``: the same with two billing processes.
- ``pipeline.usage_to_charge_p99_ms``: lifecycle events at 1,000/s; from a release's
  entry to its allocation's ``AllocationCharged`` entry (both Redis' clock). Goal <
  100 ms.
- ``billing.records_rated_per_s``: billing alone rating 1,000,000 usage records of
  1,000 tenants written straight to its stream. Goal >= 20,000/s.
- ``billing.invoice_close_s``: then closing that month for the 1,000 tenants.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from bench.common import Result, median, until, with_ratio
from bench.runtime_bench import raw_baseline
from minicloud_shared.contracts import encode, envelope_for
from minicloud_shared.contracts.billing import BillingTick
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased, GpuSlice
from minicloud_shared.contracts.topology import BILLING_EVENTS, METERING_USAGE, SCHEDULING_EVENTS
from minicloud_shared.runtime import provision
from minicloud_shared.testing.processes import start_service, stop_services

SKUS = ["h100-80gb-sxm", "a100-80gb-sxm", "l40s-48gb-pcie"]
CLASSES = ["on_demand", "spot", "reserved"]


def _spawn(service: str, url: str, **env: str) -> subprocess.Popen[bytes]:
    full = {
        "MINICLOUD_REDIS_URL": url,
        "MINICLOUD_LOG_LEVEL": "ERROR",
        "MINICLOUD_LOG_FORMAT": "json",
        "MINICLOUD_BATCH_SIZE": "500",
        **env,
    }
    return start_service(service, full, subprocess.DEVNULL)


async def _consumers(redis: Redis, stream: str, group: str) -> int:
    try:
        return len(await redis.xinfo_consumers(stream, group))
    except Exception:
        return 0


async def _services(
    url: str, redis: Redis, backlog: list[tuple[Any, str, str]] | None = None, billing: int = 1, **env: str
) -> list[subprocess.Popen[bytes]]:
    """Start metering and billing and wait until one warm-up allocation went through
    both (XINFO CONSUMERS cannot tell: a consumer blocked on an empty stream is not
    listed yet). The warm-up is a zero-length span: it adds no GPU-seconds. A
    ``backlog`` is written behind the warm-up before the services start."""
    now = datetime.now(UTC)
    slices = [GpuSlice(host_id="h", gpu_indices=[0])]
    warm = [
        (
            AllocationPlaced(
                allocation_id="warm-up",
                workload_id="wl-warm-up",
                sku=SKUS[0],
                region="eu-1",
                price_class="spot",
                gpus=slices,
                gpu_count=1,
                started_at=now,
            ),
            "t-warm-up",
            "p-warm-up",
        ),
        (
            AllocationReleased(
                allocation_id="warm-up", workload_id="wl-warm-up", reason="preempted", gpus=slices, released_at=now
            ),
            "t-warm-up",
            "r-warm-up",
        ),
    ]
    await _write(redis, SCHEDULING_EVENTS, warm, "scheduling")
    if backlog:
        await _write(redis, SCHEDULING_EVENTS, backlog, "scheduling")
    procs = [_spawn("metering", url, **env), *(_spawn("billing", url, **env) for _ in range(billing))]
    await until(lambda: _charged(redis, 1), 60, "metering and billing consuming (a warm-up allocation charged)")
    return procs


def _lifecycle(n_allocs: int, rnd: random.Random, now: datetime) -> list[tuple[Any, str, str]]:
    out: list[tuple[Any, str, str]] = []
    for i in range(n_allocs):
        a = f"b-{i:07d}"
        tenant = f"t-{i % 100}"
        gpus = rnd.choice([1, 2, 4, 8])
        start = now - timedelta(seconds=rnd.uniform(3600, 7200))
        end = start + timedelta(seconds=rnd.uniform(60, 3600))
        slices = [GpuSlice(host_id="h", gpu_indices=list(range(gpus)))]
        placed = AllocationPlaced(
            allocation_id=a,
            workload_id=f"wl-{a}",
            sku=rnd.choice(SKUS),
            region="eu-1",
            price_class=rnd.choice(CLASSES),
            gpus=slices,
            gpu_count=gpus,
            started_at=start,
        )
        released = AllocationReleased(
            allocation_id=a, workload_id=f"wl-{a}", reason="completed", gpus=slices, released_at=end
        )
        out += [(placed, tenant, f"p-{a}"), (released, tenant, f"r-{a}")]
    return out


async def _write(redis: Redis, stream: str, events: list[tuple[Any, str | None, str]], producer: str) -> list[Any]:
    now = datetime.now(UTC)
    ids: list[Any] = []
    for k in range(0, len(events), 1000):
        pipe = redis.pipeline(transaction=False)
        for payload, tenant, event_id in events[k : k + 1000]:
            env = envelope_for(payload, producer=producer, occurred_at=now, tenant_id=tenant, event_id=event_id)
            pipe.xadd(stream, encode(env, payload))
        ids += await pipe.execute()
    return ids


async def _idle(redis: Redis, stream: str, group: str) -> bool:
    for g in await redis.xinfo_groups(stream):
        if g["name"] in (group, group.encode()):
            return bool(g["pending"] == 0 and g["lag"] == 0)
    return False


async def _charged(redis: Redis, n: int) -> bool:
    return int(await redis.xlen(BILLING_EVENTS)) >= n


async def throughput(url: str, n_events: int, billing: int = 1) -> float:
    """Events per second drained from a backlog written before the services start (as
    the raw baseline drains a preloaded stream: writing it is not the consumers' work),
    on Redis's clock: from the first usage record metering wrote to the last charge
    billing wrote. The window misses metering's first batch (500 events), so the
    figure is high by at most 500 / ``n_events``."""
    redis = Redis.from_url(url)
    await redis.flushall()
    await provision(redis)
    events = _lifecycle(n_events // 2, random.Random(7), datetime.now(UTC))
    procs = await _services(url, redis, backlog=events, billing=billing)
    try:
        await until(lambda: _charged(redis, 1 + n_events // 2), 600, "every allocation charged")
        await until(lambda: _idle(redis, METERING_USAGE, "billing"), 600, "billing drained")
        (first, _), *_ = await redis.xrange(METERING_USAGE, count=1)
        (last, _), *_ = await redis.xrevrange(BILLING_EVENTS, count=1)
        elapsed = (_ms(last) - _ms(first)) / 1000
        billed = 0
        async for key in redis.scan_iter(match="mc:billing:alloc:*", count=1000):
            billed += json.loads(await redis.hget(key, "d"))["gpu_seconds"]
        expected = sum(
            int(r.released_at.timestamp() // 1 - p.started_at.timestamp() // 1) * p.gpu_count
            for (p, _, _), (r, _, _) in zip(events[::2], events[1::2], strict=True)
        )
        if billed != expected:
            raise AssertionError(f"pipeline lost or duplicated usage: billed {billed} != {expected} GPU-seconds")
    finally:
        stop_services(procs)
        await redis.aclose()
    return n_events / elapsed


def _ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


async def latency(url: str, rate: int, seconds: float) -> tuple[float, float]:
    redis = Redis.from_url(url)
    await redis.flushall()
    await provision(redis)
    procs = await _services(url, redis, MINICLOUD_BATCH_SIZE="100")
    try:
        events = _lifecycle(int(rate * seconds / 2), random.Random(11), datetime.now(UTC))
        released_at: dict[str, int] = {}
        t0 = time.perf_counter()
        for k in range(0, len(events), 20):  # 20 events every 20 ms = 1,000/s
            chunk = events[k : k + 20]
            ids = await _write(redis, SCHEDULING_EVENTS, chunk, "scheduling")
            for (payload, _, _), eid in zip(chunk, ids, strict=True):
                if isinstance(payload, AllocationReleased):
                    released_at[payload.allocation_id] = int(eid.split(b"-")[0])
            await asyncio.sleep(max(0.0, (k + 20) / rate - (time.perf_counter() - t0)))
        await until(lambda: _charged(redis, 1 + len(released_at)), 120, "every allocation charged")
        latencies = []
        for eid, fields in await redis.xrange(BILLING_EVENTS):
            if fields[b"type"] == b"minicloud.billing.allocation_charged":
                alloc = json.loads(fields[b"data"])["allocation_id"]
                if alloc == "warm-up":
                    continue
                latencies.append(int(eid.split(b"-")[0]) - released_at[alloc])
        latencies.sort()
    finally:
        stop_services(procs)
        await redis.aclose()
    return float(statistics.median(latencies)), float(latencies[max(0, int(len(latencies) * 0.99) - 1)])


def _usage_backlog(
    tenants: int, records: int, per_alloc: int = 50
) -> tuple[list[tuple[Any, str | None, str]], list[tuple[Any, str | None, str]]]:
    """Placements and their usage records (``per_alloc`` minutes each, the last one
    closing), spread over ``tenants`` and the first 25 days of November 2026."""
    n_allocs = max(1, records // per_alloc)
    month_start = datetime(2026, 11, 1, tzinfo=UTC)
    rnd = random.Random(3)
    placed: list[tuple[Any, str | None, str]] = []
    usage: list[tuple[Any, str | None, str]] = []
    for i in range(n_allocs):
        a, tenant, sku, cls = f"c-{i:07d}", f"t-{i % tenants:04d}", rnd.choice(SKUS), rnd.choice(CLASSES)
        start = month_start + timedelta(seconds=rnd.randrange(0, 25 * 86400))
        slices = [GpuSlice(host_id="h", gpu_indices=[0])]
        placed.append(
            (
                AllocationPlaced(
                    allocation_id=a,
                    workload_id=f"wl-{a}",
                    sku=sku,
                    region="eu-1",
                    price_class=cls,
                    gpus=slices,
                    gpu_count=1,
                    started_at=start,
                ),
                tenant,
                f"p-{a}",
            )
        )
        for s in range(per_alloc):
            t = start + timedelta(seconds=60 * s)
            rec = UsageRecorded(
                usage_id=f"{a}:{s + 1}",
                allocation_id=a,
                workload_id=f"wl-{a}",
                seq=s + 1,
                kind="reading" if s + 1 < per_alloc else "final",
                sku=sku,
                region="eu-1",
                price_class=cls,
                gpus=1,
                start=t,
                end=t + timedelta(seconds=60),
                gpu_seconds=60,
                closes=s + 1 == per_alloc,
                allocation_seconds=60 * per_alloc if s + 1 == per_alloc else None,
                release_reason="completed" if s + 1 == per_alloc else None,
            )
            usage.append((rec, tenant, f"u-{a}:{s + 1}"))
    return placed, usage


async def invoice_close(url: str, tenants: int, records: int) -> tuple[float, float]:
    redis = Redis.from_url(url)
    await redis.flushall()
    await provision(redis)
    procs = await _services(url, redis, MINICLOUD_TICK_S="1000000", MINICLOUD_INVOICE_GRACE_S="0")
    try:
        placed, usage = _usage_backlog(tenants, records)
        await _write(redis, SCHEDULING_EVENTS, placed, "scheduling")
        t_load = time.perf_counter()
        await until(lambda: _idle(redis, SCHEDULING_EVENTS, "billing"), 600, "allocations known to billing")
        await _write(redis, METERING_USAGE, usage, "metering")
        await until(lambda: _idle(redis, METERING_USAGE, "billing"), 3600, f"{records} usage records rated")
        rated_s = time.perf_counter() - t_load
        print(f"  rated {records:,} records in {rated_s:,.0f}s ({records / rated_s:,.0f}/s)", flush=True)
        drafts = int(await redis.zcard("mc:billing:drafts"))
        before = int(await redis.xlen(BILLING_EVENTS))
        t0 = time.perf_counter()

        async def closed() -> bool:
            tick = BillingTick(at=datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
            await _write(redis, "mc.billing.commands", [(tick, None, "")], "billing")
            return int(await redis.xlen(BILLING_EVENTS)) - before >= drafts

        await until(closed, 600, f"{drafts} invoices finalized")
        elapsed = time.perf_counter() - t0
    finally:
        stop_services(procs)
        await redis.aclose()
    return elapsed, records / rated_s


async def run(url: str, n: int = 100_000, repeats: int = 3, **kw: object) -> list[Result]:
    quick = n < 50_000
    events = 20_000 if quick else 100_000
    raw_runs, pipe_runs, two_runs = [], [], []
    for i in range(repeats):
        raw_runs.append(await raw_baseline(url, events))
        pipe_runs.append(await throughput(url, events))
        two_runs.append(await throughput(url, events, billing=2))
        print(
            f"  run {i + 1}/{repeats}: raw {raw_runs[-1]:,.0f}/s  pipeline {pipe_runs[-1]:,.0f}/s  "
            f"(2 billing replicas: {two_runs[-1]:,.0f}/s)",
            flush=True,
        )
    p50, p99 = await latency(url, 1000, 5 if quick else 20)
    print(f"  usage to charge at 1,000 events/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms", flush=True)
    tenants, records = (100, 20_000) if quick else (1000, 1_000_000)
    close_s, rating = await invoice_close(url, tenants, records)
    print(f"  closed {tenants:,} tenants' invoices ({records:,} records) in {close_s:.2f}s", flush=True)
    baseline = Result(
        "raw.xreadgroup_xack_events_per_s@pipeline",
        round(median(raw_runs), 1),
        "events/s",
        runs=raw_runs,
        note=f"redis-py XREADGROUP 100 + one XACK per read, {events} events, same run",
    )
    pipeline = with_ratio(
        Result(
            "pipeline.usage_events_per_s",
            round(median(pipe_runs), 1),
            "events/s",
            runs=pipe_runs,
            note=(
                f"{events} lifecycle events through metering and billing (one process each, batch 500), "
                "exactly once; goals >= 10,000/s and ratio >= 0.3"
            ),
        ),
        baseline,
    )
    two = with_ratio(
        Result(
            "pipeline.usage_events_per_s@2billing",
            round(median(two_runs), 1),
            "events/s",
            runs=two_runs,
            note="the same with two billing processes in one consumer group (horizontal scale on one Redis)",
        ),
        baseline,
    )
    return [
        baseline,
        pipeline,
        two,
        Result(
            "pipeline.usage_to_charge_p99_ms",
            p99,
            "ms",
            note=f"release to AllocationCharged at 1,000 events/s; p50 {p50:.0f} ms; goal < 100 ms",
        ),
        Result(
            "billing.records_rated_per_s",
            round(rating, 1),
            "records/s",
            note=f"billing alone rating {records:,} usage records of {tenants:,} tenants (batch 500); goal >= 20,000/s",
        ),
        Result(
            "billing.invoice_close_s",
            round(close_s, 2),
            "s",
            note=f"finalizing {tenants:,} tenants' month holding {records:,} usage records",
        ),
    ]


# --- profiling (bench.profile) ------------------------------------------------------------

Sampled = Callable[[int, str], Any]  # (pid, name) -> a sampler with .stop() -> seconds and .path


async def profiled(url: str, n_events: int, sampler: Sampled) -> list[Any]:
    """``throughput`` with both services sampled from the first event to the last charge."""
    from bench.profile import summarise

    redis = Redis.from_url(url)
    await redis.flushall()
    await provision(redis)
    procs = await _services(url, redis)
    try:
        samplers = [sampler(procs[0].pid, "metering"), sampler(procs[1].pid, "billing")]
        await asyncio.sleep(0.5)  # the profiler attaches
        events = _lifecycle(n_events // 2, random.Random(7), datetime.now(UTC))
        t0 = time.perf_counter()
        await _write(redis, SCHEDULING_EVENTS, events, "scheduling")
        await until(lambda: _charged(redis, 1 + n_events // 2), 600, "every allocation charged")
        print(f"  {n_events:,} events at {n_events / (time.perf_counter() - t0):,.0f}/s under the profiler")
        seconds = [s.stop() for s in samplers]
    finally:
        stop_services(procs)
        await redis.aclose()
    return [
        summarise(name, s.path, sec) for name, s, sec in zip(("metering", "billing"), samplers, seconds, strict=True)
    ]


async def profiled_billing(url: str, records: int, sampler: Sampled) -> list[Any]:
    """Billing alone rating ``records`` usage records (placements read first, unsampled)."""
    from bench.profile import summarise

    redis = Redis.from_url(url)
    await redis.flushall()
    await provision(redis)
    procs = await _services(url, redis, MINICLOUD_TICK_S="1000000")
    try:
        placed, usage = _usage_backlog(max(1, records // 1000), records)
        await _write(redis, SCHEDULING_EVENTS, placed, "scheduling")
        await until(lambda: _idle(redis, SCHEDULING_EVENTS, "billing"), 600, "allocations known to billing")
        s = sampler(procs[1].pid, "billing-rating")
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        await _write(redis, METERING_USAGE, usage, "metering")
        await until(lambda: _idle(redis, METERING_USAGE, "billing"), 3600, f"{records} usage records rated")
        print(f"  {records:,} records rated at {records / (time.perf_counter() - t0):,.0f}/s under the profiler")
        seconds = s.stop()
    finally:
        stop_services(procs)
        await redis.aclose()
    return [summarise("billing-rating", s.path, seconds)]
