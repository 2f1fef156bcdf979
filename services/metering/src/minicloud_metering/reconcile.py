"""The reconciler: metering's spans and usage records against the allocation lifecycle.

It reads scheduling's events (what allocations existed and when they ended), metering's
usage stream (what was recorded) and metering's spans, and reports every gap:

- ``missing_span``: an allocation was placed, metering has no span for it;
- ``missing_close``: an allocation ended, its span is still open;
- ``mismatch``: a closed span's records do not add up to GPUs x (end - start);
- ``duplicate``: a usage id recorded twice;
- ``orphan_usage``: usage for an allocation scheduling never placed.

With ``fix``, the first two are corrected by sending metering the facts it missed
(``ReconcileSpan``); metering applies them exactly once, like the original events. The
others are reported for a person: they mean a bug, and must not be papered over.
Scheduling's events are read as far back as they are kept (the retention), so the
reconciler is meant to run well within it (e.g. hourly).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from minicloud_metering.spans import whole_seconds
from minicloud_metering.store import SERVICE, span_key
from minicloud_shared.contracts import decode, derived_event_id
from minicloud_shared.contracts.metering import ReconcileSpan, UsageRecorded
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased
from minicloud_shared.contracts.topology import METERING_USAGE, SCHEDULING_EVENTS
from minicloud_shared.runtime import publish


@dataclass
class Gap:
    kind: str
    allocation_id: str
    detail: str


@dataclass
class Report:
    allocations: int = 0
    usage_records: int = 0
    gaps: list[Gap] = field(default_factory=list)
    fixed: int = 0

    def counts(self) -> dict[str, int]:
        return dict(Counter(g.kind for g in self.gaps))

    def as_dict(self) -> dict[str, Any]:
        return {
            "allocations": self.allocations,
            "usage_records": self.usage_records,
            "gaps": self.counts(),
            "fixed": self.fixed,
            "details": [g.__dict__ for g in self.gaps[:1000]],
        }

    def render(self) -> str:
        lines = [
            f"allocations seen: {self.allocations}, usage records: {self.usage_records}",
            "gaps: " + (", ".join(f"{k}={v}" for k, v in sorted(self.counts().items())) or "none"),
        ]
        lines += [f"  {g.kind:14} {g.allocation_id}: {g.detail}" for g in self.gaps[:50]]
        if len(self.gaps) > 50:
            lines.append(f"  ... and {len(self.gaps) - 50} more (--json for all)")
        if self.fixed:
            lines.append(f"sent {self.fixed} correction(s) to metering")
        return "\n".join(lines)


async def _scan(redis: Redis, stream: str) -> Any:
    last = "-"
    while True:
        entries: Any = await redis.xrange(stream, min=last, count=5000)
        if last != "-" and entries:
            entries = entries[1:]
        if not entries:
            return
        for _entry_id, fields in entries:
            yield fields
        last = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0]


async def reconcile(redis: Redis, *, fix: bool = False) -> Report:
    placed: dict[str, tuple[str | None, AllocationPlaced]] = {}
    released: dict[str, AllocationReleased] = {}
    async for fields in _scan(redis, SCHEDULING_EVENTS):
        msg = decode(fields)
        if isinstance(msg.payload, AllocationPlaced):
            placed[msg.payload.allocation_id] = (msg.envelope.tenant_id, msg.payload)
        elif isinstance(msg.payload, AllocationReleased):
            released[msg.payload.allocation_id] = msg.payload
    recorded: Counter[str] = Counter()
    seen_ids: Counter[str] = Counter()
    report = Report(allocations=len(placed))
    async for fields in _scan(redis, METERING_USAGE):
        msg = decode(fields)
        if isinstance(msg.payload, UsageRecorded):
            recorded[msg.payload.allocation_id] += msg.payload.gpu_seconds
            seen_ids[msg.payload.usage_id] += 1
            report.usage_records += 1
    ids = sorted(placed)
    pipe = redis.pipeline(transaction=False)
    for a in ids:
        pipe.hget(span_key(a), "d")
    spans = {a: (json.loads(d) if d else None) for a, d in zip(ids, await pipe.execute(), strict=True)}
    for a in ids:
        tenant, p = placed[a]
        span, r = spans[a], released.get(a)
        if span is None or span.get("status") == "released_first":
            report.gaps.append(Gap("missing_span", a, "placed, but metering has no span"))
            if fix:
                await _send_fix(redis, tenant, p, r)
                report.fixed += 1
        elif r is not None and span["status"] == "open":
            report.gaps.append(Gap("missing_close", a, f"ended at {r.released_at.isoformat()}, span still open"))
            if fix:
                await _send_fix(redis, tenant, p, r)
                report.fixed += 1
        elif span["status"] == "closed":
            expected = (span["end"] - span["start"]) * span["gpus"]
            if r is not None:
                expected = (max(whole_seconds(r.released_at), span["start"]) - span["start"]) * span["gpus"]
            if recorded[a] != expected:
                report.gaps.append(
                    Gap("mismatch", a, f"records add up to {recorded[a]} unit-seconds, the allocation to {expected}")
                )
    for usage_id, n in sorted(seen_ids.items()):
        if n > 1:
            report.gaps.append(Gap("duplicate", usage_id.rsplit(":", 1)[0], f"usage {usage_id} recorded {n} times"))
    for a in sorted(set(recorded) - set(placed)):
        report.gaps.append(Gap("orphan_usage", a, "usage recorded for an allocation scheduling never placed"))
    return report


async def _send_fix(redis: Redis, tenant: str | None, p: AllocationPlaced, r: AllocationReleased | None) -> None:
    fix = ReconcileSpan(
        allocation_id=p.allocation_id,
        workload_id=p.workload_id,
        sku=p.sku,
        region=p.region,
        price_class=p.price_class,
        gpu_count=p.gpu_count,
        started_at=p.started_at,
        released_at=None if r is None else r.released_at,
        reason=None if r is None else r.reason,
        gpu_milli=p.gpu_milli,
        cpu_milli=p.cpu_milli,
        memory_mib=p.memory_mib,
        mig_profile=p.mig_profile,
    )
    # The id names the correction, so running the reconciler twice sends it once.
    key = "open" if r is None else r.released_at.isoformat()
    await publish(
        redis, fix, producer=SERVICE, tenant_id=tenant, event_id=derived_event_id("reconcile", p.allocation_id, key)
    )
