"""Refusing at submission what the fleet can never hold.

A workload names a SKU (or any) and a region (or any) and asks for ``nodes`` hosts
with ``gpus_per_node`` GPUs each; a gang never spans regions. It can ever run only if
some (SKU, region) pool of the fleet — hosts that are not decommissioned, whatever
their load, drains and faults, which pass — has ``nodes`` hosts of at least
``gpus_per_node`` GPUs. What fails that is refused with 422 and stored nowhere, so it
never waits in a queue (where it would hold back others' work, see docs/scheduling.md).

The pools come from the gateway's host projection, cached for ``max_age_s``; a refusal
reads the projection again first, so a host registered a moment ago is seen.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from minicloud_gateway.guard import ApiError
from minicloud_gateway.store import HOSTS, host_key, members, read_docs
from minicloud_shared.skus import skus


class FleetShapes:
    def __init__(self, redis: Redis, max_age_s: float = 2.0) -> None:
        self.redis, self.max_age_s = redis, max_age_s
        self._at = float("-inf")
        self._pools: dict[tuple[str, str], list[int]] = {}  # (sku, region) -> GPU counts of its hosts

    async def _load(self) -> None:
        docs = await read_docs(self.redis, [host_key(h) for h in await members(self.redis, HOSTS)])
        pools: dict[tuple[str, str], list[int]] = {}
        for d in docs:
            if d is None or not d.get("sku") or d.get("state") == "decommissioned":
                continue
            pools.setdefault((d["sku"], d["region"]), []).append(int(d.get("gpus", 0)))
        self._pools, self._at = pools, time.monotonic()

    async def check(self, accepted: list[str] | None, region: str | None, gpus_per_node: int, nodes: int) -> None:
        """Raise a 422 :class:`ApiError` naming why the fleet can never hold this on any
        of the ``accepted`` SKUs (None: any SKU)."""
        for sku in accepted or []:
            if sku not in skus():
                raise ApiError(422, "unknown_sku", f"no GPU SKU {sku!r}: see GET /v1/skus")
        if time.monotonic() - self._at > self.max_age_s:
            await self._load()
        reason = self._refusal(accepted, region, gpus_per_node, nodes)
        if reason is not None and time.monotonic() - self._at > 0.05:
            await self._load()  # refuse only on a fresh view
            reason = self._refusal(accepted, region, gpus_per_node, nodes)
        if reason is not None:
            raise ApiError(422, reason[0], reason[1])

    def _refusal(
        self, accepted: list[str] | None, region: str | None, per_node: int, nodes: int
    ) -> tuple[str, str] | None:
        regions = {r for _, r in self._pools}
        if region is not None and region not in regions:
            offered = ", ".join(sorted(regions)) or "none yet"
            return "unknown_region", f"no region {region!r} (regions with GPUs: {offered}; GET /v1/regions)"
        pools = [
            counts
            for (s, r), counts in self._pools.items()
            if (accepted is None or s in accepted) and (region is None or r == region)
        ]
        if any(sum(1 for c in counts if c >= per_node) >= nodes for counts in pools):
            return None
        what = f"{' or '.join(accepted)} hosts" if accepted else "hosts"
        where = f" in {region}" if region else ""
        if not pools:
            return "no_such_capacity", f"there are no {what}{where}: this workload could never run"
        most = max(sum(1 for c in counts if c >= per_node) for counts in pools)
        biggest = max(max(counts) for counts in pools)
        need = f"{nodes} host{'s' if nodes > 1 else ''} with {per_node} GPUs each in one region"
        have = f"at most {most} such host{'s' if most > 1 else ''}" if most else f"at most {biggest} GPUs on one host"
        return "no_such_capacity", f"this needs {need}; the fleet has {have} among its {what}{where}"
