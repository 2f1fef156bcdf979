"""Inventory's own Prometheus metrics, beside the runtime's (served by the same
``/metrics``; docs/operations.md): the fleet's GPUs by state and its hosts, per SKU and
region, read at scrape time from the counters the handlers keep in the same atomic
step as every change (``capacity``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge
from redis.asyncio import Redis

from minicloud_inventory.capacity import read_summary

STATES = ("free", "allocated", "faulted", "draining")
HOST_STATES = ("active", "draining", "unreachable")


class InventoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.gpus = Gauge(
            "minicloud_inventory_gpus", "GPUs by SKU, region and state", ["sku", "region", "state"], registry=registry
        )
        self.hosts = Gauge(
            "minicloud_inventory_hosts", "Hosts registered, by SKU and region", ["sku", "region"], registry=registry
        )
        self.hosts_by_state = Gauge(
            "minicloud_inventory_hosts_by_state",
            "Hosts by SKU, region and state: active, draining, unreachable (its agent fell silent)",
            ["sku", "region", "state"],
            registry=registry,
        )

    async def refresh(self, redis: Redis) -> None:
        summary = await read_summary(redis)
        self.gpus.clear()
        self.hosts.clear()
        self.hosts_by_state.clear()
        for row in summary.rows:
            for state in STATES:
                self.gpus.labels(row.sku, row.region, state).set(getattr(row, state))
            self.hosts.labels(row.sku, row.region).set(row.hosts)
            for state in HOST_STATES:
                self.hosts_by_state.labels(row.sku, row.region, state).set(row.hosts_by_state.get(state, 0))
