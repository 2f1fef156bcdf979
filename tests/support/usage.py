"""Helpers for metering and billing tests: the allocation lifecycle as scheduling
publishes it, and the expected charges computed independently of billing's code."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from redis.asyncio import Redis

from minicloud_shared.contracts import decode
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased, GpuSlice
from minicloud_shared.runtime import publish


@dataclass(frozen=True)
class Alloc:
    allocation_id: str
    tenant: str
    start: datetime
    end: datetime
    gpus: int = 8
    sku: str = "h100-80gb-sxm"
    region: str = "eu-1"
    price_class: str = "on_demand"
    reason: str = "completed"

    def placed(self) -> AllocationPlaced:
        return AllocationPlaced(
            allocation_id=self.allocation_id,
            workload_id=f"wl-{self.allocation_id}",
            sku=self.sku,
            region=self.region,
            price_class=self.price_class,
            gpus=[GpuSlice(host_id="h1", gpu_indices=list(range(self.gpus)))],
            gpu_count=self.gpus,
            started_at=self.start,
        )

    def released(self) -> AllocationReleased:
        return AllocationReleased(
            allocation_id=self.allocation_id,
            workload_id=f"wl-{self.allocation_id}",
            reason=self.reason,
            gpus=[GpuSlice(host_id="h1", gpu_indices=list(range(self.gpus)))],
            released_at=self.end,
        )

    @property
    def seconds(self) -> int:
        """Whole seconds, cut the way the rules say: floor(end) - floor(start)."""
        return int(self.end.timestamp() // 1) - int(self.start.timestamp() // 1)


async def lifecycle(redis: Redis, *allocs: Alloc, release: bool = True) -> None:
    for a in allocs:
        await publish(redis, a.placed(), producer="scheduling", tenant_id=a.tenant, event_id=f"p-{a.allocation_id}")
    if release:
        for a in allocs:
            await publish(
                redis, a.released(), producer="scheduling", tenant_id=a.tenant, event_id=f"r-{a.allocation_id}"
            )


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def at(s: str) -> datetime:
    return datetime.fromisoformat(s)


def plus(t: datetime, seconds: float) -> datetime:
    return t + timedelta(seconds=seconds)


async def stream_payloads(redis: Redis, stream: str) -> list[Any]:
    return [decode(fields) for _, fields in await redis.xrange(stream)]
