"""Questions about scheduling's state that a person (or, later, the gateway) asks."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from minicloud_scheduling import store
from minicloud_scheduling.placement import Fleet


async def load_fleet(redis: Redis) -> Fleet:
    """The placement view, built from scheduling's host records."""
    fleet = Fleet()
    for view in (await store.host_views(redis, await store.host_ids(redis))).values():
        if view is not None:
            fleet.upsert(view)
    return fleet


async def largest_gangs(redis: Redis) -> list[dict[str, Any]]:
    """Per SKU and region: the largest gang placeable right now, for each GPUs-per-node."""
    fleet = await load_fleet(redis)
    out = []
    for sku in fleet.skus():
        regions = sorted({h.region for h in fleet.hosts.values() if h.sku == sku})
        for region in regions:
            gangs = fleet.largest_gangs(sku, region)
            best = max(((g * n, g, n) for g, n in gangs.items()), default=(0, 0, 0))
            out.append(
                {
                    "sku": sku,
                    "region": region,
                    "free_gpus": fleet.free_gpus(sku, region),
                    "largest_gang_gpus": best[0],
                    "as": f"{best[2]} x {best[1]} GPUs" if best[0] else "-",
                    "nodes_by_gpus_per_node": gangs,
                }
            )
    return out


def render(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'SKU':18} {'region':10} {'free':>6} {'largest gang':>13}  as", "-" * 62]
    for r in rows:
        lines.append(f"{r['sku']:18} {r['region']:10} {r['free_gpus']:>6} {r['largest_gang_gpus']:>13}  {r['as']}")
    return "\n".join(lines)
