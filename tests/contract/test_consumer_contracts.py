"""Consumer-driven contracts on a real Redis: the producing services (inventory,
scheduling, metering, billing) are driven with commands, and every event they really
emit is checked against every consumer's declaration of what it reads
(``minicloud_<service>.consumes``): the schema version it expects, and each field it
reads present. Every declared event must be seen at least once, so a declaration the
scenario cannot vouch for fails too."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from minicloud_agent.__main__ import build as build_agent
from minicloud_agent.agent import Agent
from minicloud_agent.settings import AgentSettings
from minicloud_billing import app as billing
from minicloud_gateway import consumes as gateway_reads
from minicloud_inventory import app as inventory
from minicloud_metering import app as metering
from minicloud_scheduling import app as scheduling
from minicloud_shared.contracts import Payload, decode, text
from minicloud_shared.contracts.agent import RunSpec
from minicloud_shared.contracts.billing import AddCredit, BudgetExceeded, PublishPriceCatalog, SetAccount
from minicloud_shared.contracts.consumers import Reads, check_emitted
from minicloud_shared.contracts.inventory import (
    ClearGpuFault,
    DecommissionHost,
    DrainHost,
    RegisterHost,
    ReportGpuFault,
    SetGpuMode,
    UndrainHost,
)
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    AllocationReleased,
    CancelWorkload,
    CompleteWorkload,
    GrantReservation,
)
from minicloud_shared.contracts.topology import (
    AGENT,
    AGENT_EVENTS,
    BILLING_EVENTS,
    INVENTORY_EVENTS,
    METERING_USAGE,
    SCHEDULING_EVENTS,
)
from minicloud_shared.runtime import ServiceRuntime, publish
from minicloud_shared.runtime.entrypoint import create_runtime
from minicloud_shared.settings import Settings
from tests.support.fleet import host, submit
from tests.support.harness import wait_until

pytestmark = pytest.mark.broker

PRODUCERS = {"inventory": inventory.build, "scheduling": scheduling.build, "metering": metering.build}
EVENT_STREAMS = (INVENTORY_EVENTS, SCHEDULING_EVENTS, METERING_USAGE, BILLING_EVENTS, AGENT_EVENTS)
# An inference program: it serves one connection (the agent's check that it listens)
# and exits 0.
SERVE_ONCE = (
    "import http.server, os\n"
    "server = http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), http.server.BaseHTTPRequestHandler)\n"
    "server.handle_request()"
)


def consumers() -> dict[str, list[Reads]]:
    from minicloud_billing import consumes as b
    from minicloud_inventory import consumes as i
    from minicloud_metering import consumes as m
    from minicloud_scheduling import consumes as s

    return {
        "inventory": i.READS,
        "scheduling": s.READS,
        "metering": m.READS,
        "billing": b.READS,
        "gateway": gateway_reads.READS,
    }


@pytest.fixture
async def producers(redis_url: str) -> AsyncIterator[Redis]:
    builds = {**PRODUCERS, "billing": billing.build}
    runtimes: list[ServiceRuntime] = []
    for service, build in builds.items():
        settings = Settings(
            service=service,
            redis_url=redis_url,
            block_ms=50,
            tick_s=0.2,
            log_format="console",
            log_level="WARNING",
            host_silence_s=1.5,
        )
        runtimes.append(create_runtime(service, build, settings))
    for r in runtimes:
        await r.start()
    redis = Redis.from_url(redis_url)
    yield redis
    for r in runtimes:
        await r.stop()
    await redis.aclose()


async def emitted(redis: Redis) -> list[dict[bytes, bytes]]:
    out: list[dict[bytes, bytes]] = []
    for stream in EVENT_STREAMS:
        out += [fields for _, fields in await redis.xrange(stream)]
    return out


async def seen(redis: Redis, *event_types: str) -> bool:
    types = {text(f[b"type"]) for f in await emitted(redis)}
    return all(t in types for t in event_types)


async def send(redis: Redis, *payloads: Payload, tenant: str | None = "acme") -> None:
    for p in payloads:
        await publish(redis, p, producer="gateway", tenant_id=tenant)


async def running_on(redis: Redis, workload_id: str) -> tuple[str, int] | None:
    """Where the workload's latest allocation runs (host, GPU), if it runs."""
    placed: tuple[str, str, int] | None = None
    released: set[str] = set()
    for f in await emitted(redis):
        p = decode(f).payload
        if isinstance(p, AllocationPlaced) and p.workload_id == workload_id:
            placed = (p.allocation_id, p.gpus[0].host_id, p.gpus[0].gpu_indices[0])
        elif isinstance(p, AllocationReleased) and p.workload_id == workload_id:
            released.add(p.allocation_id)
    return None if placed is None or placed[0] in released else (placed[1], placed[2])


async def hard_stop(redis: Redis) -> bool:
    return any(isinstance(e, BudgetExceeded) and e.cause == "hard_budget" for e in map(_payload, await emitted(redis)))


def _payload(fields: dict[bytes, bytes]) -> Payload:
    return decode(fields).payload


async def runs(redis: Redis, workload_id: str) -> bool:
    return await running_on(redis, workload_id) is not None


def agent_on(redis_url: str, tmp_path: Path) -> Agent:
    """Host ag1's agent, in process, with the process runtime."""
    settings = Settings(
        service=AGENT,
        redis_url=redis_url,
        block_ms=50,
        log_format="console",
        log_level="WARNING",
    )
    s = AgentSettings(host_id="ag1", gpus="1 x a10-24gb-pcie", workdir=tmp_path, heartbeat_s=0.3, poll_s=0.1)
    return build_agent(s, settings)


async def test_what_producers_emit_satisfies_every_consumer(producers: Redis, redis_url: str, tmp_path: Path) -> None:
    redis = producers
    now = datetime.now(UTC)
    # Inventory: hosts, and one it refuses.
    bad = RegisterHost(**{**host(9).model_dump(), "sku": "z9000"})
    await send(redis, host(1), host(2), bad, tenant=None)
    await wait_until(lambda: seen(redis, "minicloud.inventory.command_rejected"), 15, "two hosts and a refusal")
    # Billing: an account whose budgets the first minimum charge passes, a credit twice
    # (the second refused), a catalog version for later.
    budgets = {"soft_budget": Decimal("0.01"), "hard_budget": Decimal("0.03")}
    await send(redis, SetAccount(credit_limit=Decimal(1000), **budgets))
    credit = AddCredit(amount=Decimal(100), reference="pay-1")
    await send(redis, credit, credit)
    prices = PublishPriceCatalog.model_validate(
        {
            "version": "later",
            "effective_at": (now + timedelta(days=30)).isoformat(),
            "prices": [{"sku": "h100-80gb-sxm", "region": "*", "price_class": "on_demand", "per_gpu_hour": "2.19"}],
        },
        strict=False,
    )
    await send(redis, prices, tenant=None)
    # Scheduling: a reservation, a job that runs, one too large, a gang that waits.
    term = {"starts_at": now, "ends_at": now + timedelta(days=30)}
    await send(redis, GrantReservation(reservation_id="r1", sku="h100-80gb-sxm", region="eu-1", gpus=8, **term))
    await send(redis, submit("w-ok", 1), submit("w-huge", 8, nodes=9), submit("w-gang", 8, nodes=2))
    await wait_until(lambda: runs(redis, "w-ok"), 15, "w-ok to run")
    where = await running_on(redis, "w-ok")
    assert where is not None
    await wait_until(lambda: seen(redis, "minicloud.scheduling.workload_queued"), 15, "the gang to wait")
    # A fault under the job (requeued: released, queued, placed again), then repaired;
    # a drain and an undrain of the other host.
    await send(redis, ReportGpuFault(host_id=where[0], gpu_index=where[1], code="xid-79"), tenant=None)
    await wait_until(lambda: seen(redis, "minicloud.inventory.gpu_faulted"), 15, "the fault")
    await send(redis, ClearGpuFault(host_id=where[0], gpu_index=where[1]), tenant=None)
    other = "h2" if where[0] == "h1" else "h1"
    await send(redis, DrainHost(host_id=other, reason="bios"), UndrainHost(host_id=other), tenant=None)
    await send(redis, CancelWorkload(workload_id="w-gang"))
    # The idle host's GPUs become shared; a quarter of one runs there and ends.
    await send(redis, SetGpuMode(host_id=other, gpu_mode="shared"), tenant=None)
    await wait_until(lambda: seen(redis, "minicloud.inventory.gpu_mode_set"), 15, "the GPU mode change")
    await send(redis, submit("w-share", 0, gpu_milli=250))
    await wait_until(lambda: runs(redis, "w-share"), 15, "the share to run")
    await send(redis, CompleteWorkload(workload_id="w-share"))
    await wait_until(lambda: runs(redis, "w-ok"), 15, "w-ok to run again")
    # The job ends: metered, charged (a minimum past both budgets), announced.
    await send(redis, CompleteWorkload(workload_id="w-ok"))
    wanted = ("minicloud.billing.allocation_charged", "minicloud.billing.budget_alert")
    await wait_until(lambda: seen(redis, *wanted), 20, "the charge and the soft budget's alert")
    await wait_until(lambda: hard_stop(redis), 20, "the hard budget's stop")
    await send(redis, SetAccount(credit_limit=Decimal(1000), hard_budget=Decimal(1000)))
    # A host agent: registers its host, runs an inference program (running, listening,
    # exited), then falls silent (unreachable) and comes back (reachable).
    agent = agent_on(redis_url, tmp_path)
    await agent.start()
    run = RunSpec(image="local", command=[sys.executable, "-c", SERVE_ONCE], port=8000)
    await send(redis, submit("w-run", 1, sku="a10-24gb-pcie", run=run))
    done = ("minicloud.agent.endpoint_ready", "minicloud.agent.task_exited", "minicloud.agent.host_heartbeat")
    await wait_until(lambda: seen(redis, *done), 20, "the agent's program to listen and exit")
    await agent.stop()
    await wait_until(lambda: seen(redis, "minicloud.inventory.host_unreachable"), 20, "the silent host")
    agent = agent_on(redis_url, tmp_path)
    await agent.start()
    await wait_until(lambda: seen(redis, "minicloud.inventory.host_reachable"), 20, "the host back")
    await agent.stop()
    await send(redis, *(DecommissionHost(host_id=h) for h in ("h1", "h2")), tenant=None)
    finale = (
        "minicloud.billing.budget_restored",
        "minicloud.billing.invoice_updated",
        "minicloud.inventory.host_decommissioned",
    )
    await wait_until(lambda: seen(redis, *finale), 20, "the stop lifted, the invoice and the hosts gone")

    entries = await emitted(redis)
    observed: dict[str, int] = {}
    problems: list[str] = []
    for consumer, reads in consumers().items():
        for r in reads:
            matching = [e for e in entries if text(e[b"type"]) == r.event_type]
            observed[f"{consumer}:{r.event_type}"] = len(matching)
            for e in matching:
                problems += check_emitted(consumer, r, e)
    assert not problems, "\n".join(sorted(set(problems)))
    unseen = sorted(k for k, n in observed.items() if n == 0)
    assert not unseen, f"declared reads the scenario never produced (cannot vouch for them): {unseen}"


def test_a_declaration_the_producer_does_not_satisfy_is_reported() -> None:
    from minicloud_shared.contracts import encode, envelope_for
    from minicloud_shared.contracts.billing import BudgetRestored

    payload = BudgetRestored(reason="r")
    fields: dict[str, Any] = encode(envelope_for(payload, producer="billing", occurred_at=datetime.now(UTC)), payload)
    assert check_emitted("x", Reads(BudgetRestored, {"reason"}), fields) == []
    (missing,) = check_emitted("x", Reads(BudgetRestored, {"reason", "note"}), fields)
    assert missing == "x reads minicloud.billing.budget_restored.note; the producer did not write it"
    (newer,) = check_emitted("x", Reads(BudgetRestored, {"reason"}, version=2), fields)
    assert "reads minicloud.billing.budget_restored v2; the producer wrote v1" in newer


def test_a_newer_producer_is_read_tolerantly_and_an_older_one_through_its_upcaster() -> None:
    from minicloud_shared.contracts import encode, envelope_for
    from minicloud_shared.contracts.billing import BudgetRestored
    from minicloud_shared.contracts.envelope import _UPCASTERS, F_SCHEMA_VERSION, upcaster

    payload = BudgetRestored(reason="r")
    fields: dict[str, Any] = encode(envelope_for(payload, producer="billing", occurred_at=datetime.now(UTC)), payload)
    newer = {**fields, F_SCHEMA_VERSION: "3"}
    assert check_emitted("x", Reads(BudgetRestored, {"reason"}), newer) == []  # unknown fields would be dropped
    key = (BudgetRestored.event_type, 1)
    try:
        upcaster(*key)(lambda d: {**d, "note": "added in v2"})
        assert check_emitted("x", Reads(BudgetRestored, {"reason", "note"}, version=2), fields) == []
    finally:
        _UPCASTERS.pop(key, None)
