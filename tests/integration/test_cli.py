"""The real ``minicloud`` CLI against a real gateway process and Redis, with the real
scheduling service: an operator creates a tenant and a key; the tenant submits a gang
job, waits for it to be placed, sees it, completes it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from minicloud_gateway.identity import new_key
from minicloud_scheduling.app import build as build_scheduling
from minicloud_shared.runtime.entrypoint import create_runtime
from minicloud_shared.settings import Settings
from minicloud_shared.testing.processes import start_service, stop_services
from minicloud_shared.testing.redis_server import free_port
from tests.support.fleet import host_facts
from tests.support.harness import wait_until

pytestmark = pytest.mark.broker
OPERATOR_KEY = new_key()[1]


@pytest.fixture
async def gateway(redis_url: str) -> AsyncIterator[str]:
    port = free_port()
    env = {
        "MINICLOUD_REDIS_URL": redis_url,
        "MINICLOUD_HEALTH_PORT": str(port),
        "MINICLOUD_OPERATOR_KEY": OPERATOR_KEY,
        "MINICLOUD_LOG_LEVEL": "WARNING",
    }
    proc = start_service("gateway", env)
    scheduling = create_runtime(
        "scheduling",
        build_scheduling,
        Settings(service="scheduling", redis_url=redis_url, block_ms=50, log_level="WARNING"),
    )
    await scheduling.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: _up(endpoint), 30, "the gateway answering")
        yield endpoint
    finally:
        stop_services([proc])
        await scheduling.stop()


async def _up(endpoint: str) -> bool:
    try:
        async with httpx.AsyncClient() as c:
            return (await c.get(endpoint + "/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _hosts_seen(endpoint: str, n: int) -> bool:
    async with httpx.AsyncClient() as c:
        found = (await c.get(endpoint + "/v1/availability")).json()["items"]
        return bool(sum(row["free_gpus"] for row in found) == 8 * n)


async def cli(endpoint: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a thread: the scheduling service shares this test's event loop."""
    env = {**os.environ, "MINICLOUD_ENDPOINT": endpoint, "MINICLOUD_API_KEY": key, "MINICLOUD_CONFIG": "/nonexistent"}
    command = [sys.executable, "-m", "minicloud_client.cli", *args]
    return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)


async def test_a_tenant_submits_waits_for_and_completes_a_gang_with_the_cli(gateway: str, redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await host_facts(redis, 1, 2)
    await redis.aclose()
    await wait_until(lambda: _hosts_seen(gateway, 2), 10, "both hosts in the gateway's projection")
    assert (await cli(gateway, OPERATOR_KEY, "tenants", "create", "acme", "--name", "Acme")).returncode == 0
    issued = await cli(gateway, OPERATOR_KEY, "keys", "issue", "acme", "--json")
    assert issued.returncode == 0, issued.stderr
    key = json.loads(issued.stdout)["key"]
    sub = await cli(
        gateway, key, "workloads", "submit", "llama-pt", "--gpus", "8", "--nodes", "2", "--sku", "h100-80gb-sxm"
    )
    assert sub.returncode == 0, sub.stderr
    wid = sub.stdout.strip()
    waited = await cli(gateway, key, "workloads", "wait", wid, "--timeout", "30")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "running" in waited.stdout
    shown: Any = json.loads((await cli(gateway, key, "workloads", "get", wid, "--json")).stdout)
    assert sorted(shown["allocation"]["hosts"]) == ["h1", "h2"]
    table = await cli(gateway, key, "workloads", "list")
    assert wid in table.stdout
    assert "running" in table.stdout
    # Each invocation is a submission of its own; a retry names the first with its key.
    again = await cli(gateway, key, "workloads", "submit", "llama-pt", "--gpus", "1", "--sku", "h100-80gb-sxm")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() != wid
    keyed = ["workloads", "submit", "eval", "--gpus", "1", "--sku", "h100-80gb-sxm", "--idempotency-key", "eval-1"]
    first, retry = await cli(gateway, key, *keyed), await cli(gateway, key, *keyed)
    assert first.stdout.strip() == retry.stdout.strip() != ""
    either = ["workloads", "submit", "either", "--gpus", "1", "--sku", "h100-80gb-sxm,h200-141gb-sxm"]
    several = (await cli(gateway, key, *either)).stdout.strip()
    doc: Any = json.loads((await cli(gateway, key, "workloads", "get", several, "--json")).stdout)
    assert doc["skus"] == ["h100-80gb-sxm", "h200-141gb-sxm"]
    for extra in (again.stdout.strip(), first.stdout.strip(), several):
        assert (await cli(gateway, key, "workloads", "cancel", extra)).returncode == 0
    assert (await cli(gateway, key, "workloads", "complete", wid)).returncode == 0
    assert (await cli(gateway, key, "workloads", "wait", wid, "--until", "ended", "--timeout", "30")).returncode == 0
    listed = await cli(gateway, key, "prices")
    assert "h100-80gb-sxm" in listed.stdout
    assert "2.99" in listed.stdout
    quoted = json.loads((await cli(gateway, key, "quote", "h100-80gb-sxm", "8", "1", "--json")).stdout)
    assert quoted["amount"] == "23.92"
    # Errors: one line, a code scripts can rely on.
    missing = await cli(gateway, key, "workloads", "get", "wl-nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "minicloud: not_found: no workload wl-nope"
    assert (await cli(gateway, "mck_000000000000_" + "x" * 43, "workloads", "list")).returncode == 1
    assert (await cli("http://127.0.0.1:1", key, "workloads", "list")).returncode == 3
