"""R01: ``kill -9`` a random one of 3 metering consumers every 2 s (restarted after
0.5 s) while usage-producing lifecycle events flow; billed GPU-seconds per tenant must
equal the allocations' GPU-seconds exactly, with no usage record twice and none lost.

The services run as real processes (``python -m minicloud_metering``,
``python -m minicloud_billing``). PR size: 10,000 events; ``make chaos`` runs 100,000
(``MINICLOUD_R01_EVENTS``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from minicloud_billing.records import Invoice
from minicloud_shared.contracts import decode, encode, envelope_for
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.contracts.topology import BILLING_EVENTS, METERING_USAGE, SCHEDULING_EVENTS
from minicloud_shared.runtime import provision
from tests.support.harness import wait_until
from tests.support.usage import Alloc

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENTS = int(os.environ.get("MINICLOUD_R01_EVENTS", "10000"))
TENANTS = [f"tenant-{i:02d}" for i in range(20)]
RECLAIM_IDLE_MS = 2000


def spawn(service: str, redis_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MINICLOUD_REDIS_URL": redis_url,
        "MINICLOUD_RECLAIM_IDLE_MS": str(RECLAIM_IDLE_MS),
        "MINICLOUD_RECLAIM_POLL_MS": "200",
        "MINICLOUD_METER_INTERVAL_S": "1",
        "MINICLOUD_LOG_LEVEL": "WARNING",
        "MINICLOUD_LOG_FORMAT": "json",
        "MINICLOUD_HEALTH_PORT": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", f"minicloud_{service}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def allocations(n: int, now: datetime, rnd: random.Random) -> list[Alloc]:
    """Allocations that started up to an hour ago; most ended already, some end in the
    next minute (so open spans get readings, and late releases get adjustments)."""
    out = []
    for i in range(n):
        start = now - timedelta(seconds=rnd.uniform(60, 3600))
        end = min(start + timedelta(seconds=rnd.uniform(60, 7200)), now + timedelta(seconds=rnd.uniform(0, 60)))
        out.append(
            Alloc(
                f"r01-{i:06d}",
                rnd.choice(TENANTS),
                start,
                end,
                gpus=rnd.choice([1, 2, 4, 8]),
                sku=rnd.choice(["h100-80gb-sxm", "a100-80gb-sxm", "l40s-48gb-pcie"]),
                price_class=rnd.choice(["on_demand", "spot", "reserved"]),
            )
        )
    return out


async def publish_paced(redis: Redis, allocs: list[Alloc], rate_per_s: float) -> None:
    """Placements and releases interleaved, each release after its placement, paced."""
    events: list[tuple[str, Any, str]] = []
    for a in allocs:
        events.append((f"p-{a.allocation_id}", a.placed(), a.tenant))
    for i, a in enumerate(allocs):
        events.insert(min(len(events), 2 * i + 1 + len(allocs) // 4), (f"r-{a.allocation_id}", a.released(), a.tenant))
    started = time.monotonic()
    for k in range(0, len(events), 100):
        pipe = redis.pipeline(transaction=False)
        for event_id, payload, tenant in events[k : k + 100]:
            env = envelope_for(
                payload, producer="scheduling", event_id=event_id, tenant_id=tenant, occurred_at=datetime.now(UTC)
            )
            pipe.xadd(SCHEDULING_EVENTS, encode(env, payload))
        await pipe.execute()
        ahead = (k + 100) / rate_per_s - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)


async def billed_by_tenant(redis: Redis) -> Counter[str]:
    billed: Counter[str] = Counter()
    async for key in redis.scan_iter(match="mc:billing:invoice:*", count=1000):
        inv = Invoice.model_validate_json(await redis.hget(key, "d"))
        billed[inv.tenant] += sum(ln.gpu_seconds for ln in inv.line_list() if ln.kind == "usage")
    return billed


class Charged:
    """Allocations charged so far, from billing's ``AllocationCharged`` events, read
    incrementally (each entry once): the wait's own polling must not load the machine
    it measures (reading all 50,000 allocation records every second did, at full size)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.last = "-"
        self.ids: set[str] = set()

    async def at_least(self, n: int) -> bool:
        while True:
            start = self.last if self.last == "-" else f"({self.last}"
            rows = await self.redis.xrange(BILLING_EVENTS, start, "+", count=5000)
            for _, fields in rows:
                if fields.get(b"type") == b"minicloud.billing.allocation_charged":
                    self.ids.add(json.loads(fields[b"data"])["allocation_id"])
            if len(rows) < 5000:
                if rows:
                    self.last = rows[-1][0].decode()
                return len(self.ids) >= n
            self.last = rows[-1][0].decode()


async def test_r01_kill_9_metering_consumers_loses_and_duplicates_no_gpu_second(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await provision(redis)
    rnd = random.Random(20261125)
    allocs = allocations(EVENTS // 2, datetime.now(UTC), rnd)
    expected: Counter[str] = Counter()
    for a in allocs:
        expected[a.tenant] += a.seconds * a.gpus
    meters = [spawn("metering", redis_url) for _ in range(3)]
    billing = spawn("billing", redis_url)
    kills = 0
    stop = asyncio.Event()

    async def chaos() -> None:
        nonlocal kills
        while not stop.is_set():
            await asyncio.sleep(2)
            if stop.is_set():
                return
            i = rnd.randrange(3)
            meters[i].send_signal(signal.SIGKILL)
            meters[i].wait()
            kills += 1
            await asyncio.sleep(0.5)
            meters[i] = spawn("metering", redis_url)

    killer = asyncio.create_task(chaos())
    started = time.monotonic()
    try:
        await publish_paced(redis, allocs, rate_per_s=1000)
        # Keep killing for as long as the work flows, then let it drain.
        charged = Charged(redis)
        try:
            await wait_until(lambda: charged.at_least(len(allocs)), 60 + EVENTS / 200, "every allocation charged", 1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {len(charged.ids)} of {len(allocs)} charged, {kills} kills") from exc
        drained_s = time.monotonic() - started
    finally:
        stop.set()
        await killer
        for p in [*meters, billing]:
            p.send_signal(signal.SIGTERM)
        for p in [*meters, billing]:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    records = [decode(f).payload for _, f in await redis.xrange(METERING_USAGE)]
    usage_ids = Counter(r.usage_id for r in records if isinstance(r, UsageRecorded))
    duplicates = sum(c - 1 for c in usage_ids.values() if c > 1)
    billed = await billed_by_tenant(redis)
    lost = {t: expected[t] - billed[t] for t in expected if billed[t] != expected[t]}
    print(
        f"R01: events={EVENTS} allocations={len(allocs)} kills={kills} usage records={sum(usage_ids.values())} "
        f"duplicates={duplicates} tenants off={len(lost)} billed GPU-s={sum(billed.values())} "
        f"expected GPU-s={sum(expected.values())} drained in {drained_s:.1f}s"
    )
    assert kills >= 1
    assert duplicates == 0
    assert lost == {}
    assert billed == expected
    await redis.aclose()
