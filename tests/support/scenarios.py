"""Service-level scenarios on a ``testing.memory.Cloud``: the same steps run on the
in-memory substrate (unit tier) and on a real Redis (integration tier)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from minicloud_billing.app import build as billing
from minicloud_inventory.app import build as inventory
from minicloud_metering.app import build as metering
from minicloud_scheduling.app import build as scheduling
from minicloud_shared.contracts.billing import AllocationCharged
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    AllocationReleased,
    CompleteWorkload,
    WorkloadEnded,
)
from minicloud_shared.contracts.topology import BILLING_EVENTS, METERING_USAGE, SCHEDULING_EVENTS
from minicloud_shared.pricing import base_catalog, line_amount
from minicloud_shared.runtime import publish
from minicloud_shared.testing.memory import Cloud
from tests.support.fleet import host, submit

SERVICES = {"inventory": inventory, "scheduling": scheduling, "metering": metering, "billing": billing}
T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


async def a_jobs_life(cloud: Cloud) -> None:
    """Submit → placed → completed → metered → charged, exactly once, whatever the
    redeliveries: every count below is exact."""
    await cloud.send(host(1), at=T0 - timedelta(minutes=5))
    await cloud.settle()
    await cloud.send(submit("w1", 2), "acme", at=T0)
    await cloud.settle()
    (placed,) = await cloud.of_type(SCHEDULING_EVENTS, AllocationPlaced)
    assert (placed.gpu_count, placed.started_at) == (2, T0)
    done = CompleteWorkload(workload_id="w1")
    _, event_id = await publish(
        cloud.redis, done, producer="gateway", tenant_id="acme", occurred_at=T0 + timedelta(seconds=90)
    )
    await cloud.settle()
    # The same completion again (a producer's retry under its event id): nothing more.
    await publish(cloud.redis, done, producer="gateway", tenant_id="acme", event_id=event_id, occurred_at=T0)
    await cloud.settle()
    (released,) = await cloud.of_type(SCHEDULING_EVENTS, AllocationReleased)
    (ended,) = await cloud.of_type(SCHEDULING_EVENTS, WorkloadEnded)
    assert (released.reason, ended.outcome) == ("completed", "completed")
    usage = await cloud.of_type(METERING_USAGE, UsageRecorded)
    assert [(u.kind, u.gpu_seconds) for u in usage] == [("final", 2 * 90)]
    (charged,) = await cloud.of_type(BILLING_EVENTS, AllocationCharged)
    price = base_catalog().price("h100-80gb-sxm", "eu-1", "on_demand")
    assert price is not None
    assert (charged.gpu_seconds, charged.amount) == (180, line_amount(180, price))
