"""Builders of hosts and workloads the tests share (commands as the gateway sends
them, and inventory's fact of a host for tests that run scheduling alone)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from minicloud_shared.contracts.inventory import HostRegistered, RegisterHost
from minicloud_shared.contracts.scheduling import SubmitWorkload
from minicloud_shared.runtime import publish


def host(i: int, *, rack: int = 0, domain: int | None = None, zone: str = "eu-1a", prefix: str = "h") -> RegisterHost:
    """An 8 x H100 host ``<prefix><i>`` in eu-1 (its own NVLink domain unless ``domain``)."""
    return RegisterHost(
        host_id=f"{prefix}{i}",
        region="eu-1",
        zone=zone,
        rack=f"r{rack}",
        nvlink_domain=f"nvl{i if domain is None else domain}",
        sku="h100-80gb-sxm",
        gpu_count=8,
    )


def submit(wid: str, gpus: int, nodes: int = 1, **kw: Any) -> SubmitWorkload:
    """A training job of ``nodes`` x ``gpus`` H100s."""
    fields: dict[str, Any] = {"sku": "h100-80gb-sxm", **kw}
    return SubmitWorkload(
        workload_id=wid,
        name=wid,
        kind="training",
        gpus_per_node=gpus,
        nodes=nodes,
        client_command_id=f"cmd-{wid}",
        **fields,
    )


async def host_facts(redis: Redis, *ids: int, domain: str | None = "n") -> None:
    """Inventory's facts of 8-GPU hosts ``h<i>`` in one NVLink domain (``None``: each its
    own), published directly (for tests that run scheduling without inventory)."""
    for i in ids:
        fact = HostRegistered(
            host_id=f"h{i}",
            region="eu-1",
            zone="eu-1a",
            rack="r0",
            nvlink_domain=domain or f"h{i}",
            sku="h100-80gb-sxm",
            gpu_ids=[f"h{i}/gpu{g}" for g in range(8)],
            generation=1,
        )
        await publish(redis, fact, producer="inventory")
