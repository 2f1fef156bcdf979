"""The gateway's read side: projections of the services' events into its own keys
(``store``), by resource: ``workloads``, ``hosts``, ``money`` (catalog, invoices,
accounts, budget events) and ``operations`` (operators' commands, reservations, and
commands their owners dead-lettered)."""

from __future__ import annotations

from minicloud_gateway.projections import hosts, money, operations, workloads
from minicloud_shared.contracts.topology import BILLING_COMMANDS, INVENTORY_COMMANDS, SCHEDULING_COMMANDS
from minicloud_shared.runtime import ServiceRuntime

RESOURCES = (operations, hosts, money, workloads)


def build_projections(runtime: ServiceRuntime) -> None:
    """Register every projection handler on ``runtime``."""
    for resource in RESOURCES:
        for payload_type, handler, prefetch in resource.SUBSCRIPTIONS:
            runtime.add_route(payload_type, handler, prefetch=prefetch)
    for stream, owner in (
        (INVENTORY_COMMANDS, "inventory"),
        (SCHEDULING_COMMANDS, "scheduling"),
        (BILLING_COMMANDS, "billing"),
    ):
        runtime.on_dead_letters(stream, owner, operations.dead_lettered, prefetch=operations.dead_letter_keys)
