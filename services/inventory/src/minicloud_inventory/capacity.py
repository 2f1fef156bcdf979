"""The capacity summary: the datacenter as one computer.

GPUs total / free / allocated / faulted / draining per SKU and region, and the
fleet's compute in BF16 PFLOPS — read from the counters the handlers keep in the
same atomic step as every change, so it is never out of step with the records.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from minicloud_inventory.store import CAPACITY
from minicloud_shared.skus import skus


class CapacityRow(BaseModel):
    sku: str = Field(description="GPU SKU, or * for the whole fleet")
    region: str = Field(description="Region, or * for all")
    hosts: int
    total: int
    free: int
    allocated: int
    faulted: int
    draining: int
    bf16_pflops: Decimal = Field(description="Peak dense BF16 PFLOPS of the GPUs in service")
    free_bf16_pflops: Decimal
    hosts_by_state: dict[str, int] = Field(
        default_factory=dict, description="Hosts by state: active, draining, unreachable (an agent fell silent)"
    )


class CapacitySummary(BaseModel):
    rows: list[CapacityRow]
    fleet: CapacityRow


def _row(sku: str, region: str, counts: dict[str, int]) -> CapacityRow:
    tflops = skus()[sku].bf16_tflops if sku in skus() else Decimal(0)
    in_service = counts.get("free", 0) + counts.get("allocated", 0) + counts.get("draining", 0)
    return CapacityRow(
        sku=sku,
        region=region,
        hosts=counts.get("hosts", 0),
        total=in_service + counts.get("faulted", 0),
        free=counts.get("free", 0),
        allocated=counts.get("allocated", 0),
        faulted=counts.get("faulted", 0),
        draining=counts.get("draining", 0),
        bf16_pflops=(in_service * tflops / 1000).quantize(Decimal("0.001")),
        free_bf16_pflops=(counts.get("free", 0) * tflops / 1000).quantize(Decimal("0.001")),
        hosts_by_state={k.removeprefix("hosts_"): v for k, v in sorted(counts.items()) if k.startswith("hosts_")},
    )


async def read_summary(redis: Redis) -> CapacitySummary:
    raw = await redis.hgetall(CAPACITY)
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for k, v in raw.items():
        sku, region, what = (k.decode() if isinstance(k, bytes) else k).split("|")
        groups.setdefault((sku, region), {})[what] = int(v)
    rows = [_row(sku, region, counts) for (sku, region), counts in sorted(groups.items())]
    rows = [r for r in rows if r.hosts or r.total]
    fleet = CapacityRow(
        sku="*",
        region="*",
        **{
            f: sum(getattr(r, f) for r in rows)
            for f in ("hosts", "total", "free", "allocated", "faulted", "draining", "bf16_pflops", "free_bf16_pflops")
        },
    )
    return CapacitySummary(rows=rows, fleet=fleet)


def render(summary: CapacitySummary) -> str:
    head = (
        f"{'SKU':18} {'region':10} {'hosts':>6} {'GPUs':>7} {'free':>7} {'alloc':>7} "
        f"{'fault':>6} {'drain':>6} {'PFLOPS':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in [*summary.rows, summary.fleet]:
        name = "fleet" if r.sku == "*" else r.sku
        lines.append(
            f"{name:18} {r.region if r.region != '*' else '':10} {r.hosts:>6} {r.total:>7} {r.free:>7} "
            f"{r.allocated:>7} {r.faulted:>6} {r.draining:>6} {r.bf16_pflops:>9}"
        )
    return "\n".join(lines)
