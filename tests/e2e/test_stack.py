"""End to end, against the compose stack on locally built images: every service in its
container under its own Redis user. The tenant's side goes through the public API
(tenant, key, submit, watch, complete); what has no endpoint yet (registering hosts,
reading the invoice) goes onto the streams as the gateway's user, or through billing's
command line in its container.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from minicloud_shared.contracts import decode
from minicloud_shared.contracts.billing import AllocationCharged
from minicloud_shared.contracts.inventory import RegisterHost
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    AllocationReleased,
    CompleteWorkload,
)
from minicloud_shared.contracts.topology import BILLING_EVENTS, SCHEDULING_EVENTS
from minicloud_shared.runtime import publish
from tests.e2e.conftest import OPERATOR_KEY, Stack
from tests.support import fleet

pytestmark = [pytest.mark.broker, pytest.mark.slow]
H100_ON_DEMAND = Decimal("2.99")  # the shipped price list's H100 on-demand price per GPU-hour


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


async def events(redis: Redis, stream: str) -> list[Any]:
    return [decode(f) for _, f in await redis.xrange(stream)]


async def first(redis: Redis, stream: str, kind: type) -> Any:
    return next((e.payload for e in await events(redis, stream) if isinstance(e.payload, kind)), None)


async def until(what: str, within_s: float, check: Any) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.2)


def host(i: int) -> RegisterHost:
    return fleet.host(i, domain=1, prefix="e2e-h")


async def test_a_gang_job_from_submission_to_its_invoice(stack: Stack) -> None:
    """The tenant's side through the public API: tenant and key by the operator, the
    gang submitted, watched and completed over HTTP; the invoice from billing."""
    gw = Redis.from_url(stack.url("gateway"))
    op = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    try:
        for i in (1, 2):
            await publish(gw, host(i), producer="gateway")  # hosts: no operator endpoint yet
        async with httpx.AsyncClient(base_url=stack.api, timeout=10) as api:
            assert (
                await api.post("/v1/tenants", json={"tenant_id": "acme", "name": "Acme"}, headers=op)
            ).status_code == 201
            key = (await api.post("/v1/tenants/acme/keys", headers=op)).json()["key"]
            acme = {"Authorization": f"Bearer {key}"}
            spec = {"name": "gang", "kind": "pre_training", "sku": "h100-80gb-sxm", "gpus_per_node": 8, "nodes": 2}
            submitted = await api.post("/v1/workloads", json=spec, headers={**acme, "Idempotency-Key": "e2e-gang"})
            assert submitted.status_code == 202, submitted.text
            wid = submitted.json()["workload_id"]

            async def running() -> Any:
                doc = (await api.get(f"/v1/workloads/{wid}", headers=acme)).json()
                return doc if doc.get("status") == "running" else None

            shown = await until("the gang running", 60, running)
            assert sorted(shown["allocation"]["hosts"]) == ["e2e-h1", "e2e-h2"]
            await asyncio.sleep(2)
            assert (await api.post(f"/v1/workloads/{wid}/complete", headers=acme)).status_code == 202
        start = await first(gw, SCHEDULING_EVENTS, AllocationPlaced)
        assert start.gpu_count == 16
        charge = await until("the allocation charged", 60, lambda: first(gw, BILLING_EVENTS, AllocationCharged))
        released = await first(gw, SCHEDULING_EVENTS, AllocationReleased)
    finally:
        await gw.aclose()
    # Independently: whole seconds of the allocation, 16 GPUs, the 60 s minimum on its own line.
    seconds = int(released.released_at.timestamp() // 1) - int(start.started_at.timestamp() // 1)
    usage = seconds * 16
    minimum = max(0, 60 - seconds) * 16
    expected = cents(Decimal(usage) * H100_ON_DEMAND / 3600) + cents(Decimal(minimum) * H100_ON_DEMAND / 3600)
    assert charge.gpu_seconds == usage + minimum
    month = start.started_at.strftime("%Y-%m")
    printed = stack.run(
        "exec", "-T", "billing", "python", "-m", "minicloud_billing", "invoice", "acme", month, "--json"
    )
    invoice = json.loads(printed.stdout)
    assert Decimal(invoice["total"]) == expected
    assert {line["kind"]: line["gpu_seconds"] for line in invoice["lines"]} == {
        "usage": usage,
        **({"minimum": minimum} if minimum else {}),
    }


async def test_killing_metering_and_billing_containers_loses_and_doubles_no_gpu_second(stack: Stack) -> None:
    gw = Redis.from_url(stack.url("gateway"))
    n = 40
    try:
        for i in range(10, 14):
            await publish(gw, host(i), producer="gateway")
        for k in range(n):
            await publish(gw, fleet.submit(f"chaos-{k}", 1 + k % 2), producer="gateway", tenant_id=f"tenant-{k % 3}")
        await asyncio.sleep(1)
        for k in range(n):
            if k == n // 2:
                subprocess_kill(stack, "metering", "billing")
            await publish(
                gw, CompleteWorkload(workload_id=f"chaos-{k}"), producer="gateway", tenant_id=f"tenant-{k % 3}"
            )
            await asyncio.sleep(0.05)
        stack.run("start", "metering", "billing")

        async def all_charged() -> list[Any]:
            charged = [
                e
                for e in await events(gw, BILLING_EVENTS)
                if isinstance(e.payload, AllocationCharged) and e.payload.workload_id.startswith("chaos-")
            ]
            return charged if len({c.payload.allocation_id for c in charged}) >= n else []

        charged = await until("every allocation charged after the kills", 120, all_charged)
        lifecycle = await events(gw, SCHEDULING_EVENTS)
    finally:
        await gw.aclose()
    ours = [e for e in lifecycle if getattr(e.payload, "workload_id", "").startswith("chaos-")]
    placed = {e.payload.allocation_id: e.payload for e in ours if isinstance(e.payload, AllocationPlaced)}
    released = {e.payload.allocation_id: e.payload for e in ours if isinstance(e.payload, AllocationReleased)}
    assert len(placed) == n
    allocated = sum(
        (int(released[a].released_at.timestamp() // 1) - int(p.started_at.timestamp() // 1)) * p.gpu_count
        for a, p in placed.items()
    )
    billed = sum(c.payload.gpu_seconds - c.payload.minimum_gpu_seconds for c in charged)
    assert len(charged) == n  # one charge per allocation: none twice
    assert billed == allocated


def subprocess_kill(stack: Stack, *services: str) -> None:
    import subprocess

    subprocess.run(["docker", "kill", *(stack.container(s) for s in services)], check=True, capture_output=True)
