"""End to end, against the compose stack on locally built images: every service in its
container under its own Redis user. The gang job goes through the public API alone —
the operator registers hosts and creates the tenant, the tenant submits, watches,
completes and reads its invoice — and the amount is computed here from the
allocation's times (as scheduling published them) and the price list.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from redis.asyncio import Redis

from minicloud_demo import scenario, sim
from minicloud_shared.clock import clock_from_spec
from minicloud_shared.contracts import decode
from minicloud_shared.contracts.billing import AllocationCharged
from minicloud_shared.contracts.inventory import RegisterHost
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    AllocationReleased,
)
from minicloud_shared.contracts.topology import BILLING_EVENTS, SCHEDULING_EVENTS
from tests.e2e.conftest import FACTOR, OPERATOR_KEY, Stack
from tests.support import fleet

pytestmark = [pytest.mark.broker, pytest.mark.slow]
H100_ON_DEMAND = Decimal("2.99")  # the shipped price list's H100 on-demand price per GPU-hour


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


async def events(redis: Redis, stream: str) -> list[Any]:
    return [decode(f) for _, f in await redis.xrange(stream)]


async def first(redis: Redis, stream: str, kind: Any) -> Any:
    """The first payload on ``stream`` of type ``kind`` (or for which ``kind(payload)`` holds)."""
    test = kind if not isinstance(kind, type) else (lambda p: isinstance(p, kind))
    return next((e.payload for e in await events(redis, stream) if test(e.payload)), None)


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
    """Hosts, tenant, key, submission, completion and the invoice, all over HTTP."""
    gw = Redis.from_url(stack.url("gateway"))
    op = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    try:
        async with httpx.AsyncClient(base_url=stack.api, timeout=10) as api:
            for i in (1, 2):
                accepted = await api.post("/v1/hosts", json=host(i).model_dump(), headers=op)
                assert accepted.status_code == 202, accepted.text

                async def settled(where: str = accepted.headers["Location"]) -> Any:
                    doc = (await api.get(where, headers=op)).json()
                    return doc if doc["status"] != "pending" else None

                assert (await until(f"host {i} registered", 30, settled))["status"] == "done"
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
            # Two hosts of one NVLink domain: these two, or the agents' two H100 hosts.
            assert sorted(shown["allocation"]["hosts"]) in (["e2e-h1", "e2e-h2"], ["local-h1", "local-h2"])
            await asyncio.sleep(2)
            assert (await api.post(f"/v1/workloads/{wid}/complete", headers=acme)).status_code == 202
            start = await first(gw, SCHEDULING_EVENTS, AllocationPlaced)
            assert start.gpu_count == 16
            released = await until("the release", 30, lambda: first(gw, SCHEDULING_EVENTS, AllocationReleased))
            # Independently: whole seconds of the allocation, 16 GPUs, the 60 s minimum on its own line.
            seconds = int(released.released_at.timestamp() // 1) - int(start.started_at.timestamp() // 1)
            usage = seconds * 16
            minimum = max(0, 60 - seconds) * 16
            # The stack's clock runs a day a minute: the allocation may cross a month's
            # end, and its usage then lies on two invoices, a line on each.
            months = sorted({start.started_at.strftime("%Y-%m"), released.released_at.strftime("%Y-%m")})

            async def invoices() -> Any:
                found = []
                for month in months:
                    r = await api.get(f"/v1/invoices/{month}", headers=acme)
                    if r.status_code == 200:
                        found.append(r.json())  # (a month it spent under a second in may have none)
                lines = [ln for inv in found for ln in inv["lines"]]
                kinds = {k: sum(ln["gpu_seconds"] for ln in lines if ln["kind"] == k) for k in ("usage", "minimum")}
                return found if kinds == {"usage": usage, "minimum": minimum} else None

            invs = await until(f"{usage} GPU-seconds and a minimum of {minimum} on the invoices", 60, invoices)
            for inv in invs:
                # Each line: its GPU-seconds at the H100's price, rounded once; the total, their sum.
                assert {ln["kind"] for ln in inv["lines"]} <= {"usage", "minimum"}
                for ln in inv["lines"]:
                    assert Decimal(ln["amount"]) == cents(Decimal(ln["gpu_seconds"]) * H100_ON_DEMAND / 3600), ln
                assert Decimal(inv["total"]) == sum((Decimal(ln["amount"]) for ln in inv["lines"]), Decimal(0))
            line, month = next((ln, inv["month"]) for inv in invs for ln in inv["lines"] if ln["kind"] == "usage")
            why = (await api.get(f"/v1/invoices/{month}/lines/{quote(line['line_id'], safe='')}", headers=acme)).json()
            assert [(a["workload_id"], a["gpu_seconds"]) for a in why["allocations"]] == [(wid, line["gpu_seconds"])]
        charge = await until("the allocation charged", 60, lambda: first(gw, BILLING_EVENTS, AllocationCharged))
        assert charge.gpu_seconds == usage + minimum
    finally:
        await gw.aclose()


async def test_killing_metering_and_billing_containers_during_a_demo_run_loses_and_doubles_no_gpu_second(
    stack: Stack,
) -> None:
    """A short demo run (a simulated day of a quarter-size datacenter, through the public
    API) with the metering and billing containers killed with SIGKILL in its middle and
    started again: every allocation is charged exactly once, and billed GPU-seconds equal
    allocated GPU-seconds exactly."""
    clock = clock_from_spec(stack.clock)
    start = (clock.now() + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    plan = scenario.build(start, days=1, seed=11, scale=0.25, load=8)
    assert len(plan.jobs) >= 25

    async def chaos() -> None:
        await clock.sleep((start - clock.now()).total_seconds() + 10 * 3600)  # ten simulated hours in
        await asyncio.to_thread(subprocess_kill, stack, "metering", "billing")
        await asyncio.sleep(3)
        await asyncio.to_thread(stack.run, "start", "metering", "billing")

    killer = asyncio.create_task(chaos())
    record = await sim.run(plan, stack.api, OPERATOR_KEY, clock, FACTOR)
    assert killer.done(), "the kill happened during the run"
    await killer
    assert record.submitted >= 25
    gw = Redis.from_url(stack.url("gateway"))
    try:
        demo = {w["workload_id"] for w in record.workloads}

        async def all_charged() -> tuple[list[Any], dict[str, Any]] | None:
            ours = [e for e in await events(gw, SCHEDULING_EVENTS) if getattr(e.payload, "workload_id", "") in demo]
            placed = {e.payload.allocation_id: e.payload for e in ours if isinstance(e.payload, AllocationPlaced)}
            charged = [
                e.payload
                for e in await events(gw, BILLING_EVENTS)
                if isinstance(e.payload, AllocationCharged) and e.payload.allocation_id in placed
            ]
            return (charged, placed) if placed and len({c.allocation_id for c in charged}) >= len(placed) else None

        charged, placed = await until("every allocation charged after the kills", 120, all_charged)
        lifecycle = await events(gw, SCHEDULING_EVENTS)
    finally:
        await gw.aclose()
    released = {e.payload.allocation_id: e.payload for e in lifecycle if isinstance(e.payload, AllocationReleased)}
    allocated = sum(
        (int(released[a].released_at.timestamp() // 1) - int(p.started_at.timestamp() // 1)) * p.gpu_count
        for a, p in placed.items()
    )
    billed = sum(c.gpu_seconds - c.minimum_gpu_seconds for c in charged)
    print(f"e2e chaos: {record.submitted} workloads, {len(placed)} allocations, {allocated} GPU-seconds allocated")
    assert len(charged) == len(placed)  # one charge per allocation: none twice
    assert billed == allocated
    assert allocated > 0


def subprocess_kill(stack: Stack, *services: str) -> None:
    import subprocess

    subprocess.run(["docker", "kill", *(stack.container(s) for s in services)], check=True, capture_output=True)


async def test_a_real_container_runs_on_an_agents_host_its_logs_come_back_and_it_is_charged(stack: Stack) -> None:
    """The Docker runtime: a 2-node gang of the workload image on the agents' H100 hosts
    prints its ranks, ends by itself (exit 0 on both), its output comes back through the
    CLI, and it is charged for its run (times as scheduling published them)."""
    op = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    gw = Redis.from_url(stack.url("gateway"))
    try:
        async with httpx.AsyncClient(base_url=stack.api, timeout=10) as api:
            hosts = await until(
                "the agents' hosts",
                60,
                lambda: _agent_hosts(api, op),
            )
            assert {h["host_id"]: h["gpus"] for h in hosts} == {"local-h1": 8, "local-h2": 8, "local-l1": 1}
            assert (
                await api.post("/v1/tenants", json={"tenant_id": "runs", "name": "Runs"}, headers=op)
            ).status_code == 201
            key = (await api.post("/v1/tenants/runs/keys", headers=op)).json()["key"]
            tenant = {"Authorization": f"Bearer {key}"}
            code = (
                "import os, time; print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], 'as', os.getuid());"
                " time.sleep(1)"
            )
            spec = {
                "name": "real",
                "kind": "training",
                "sku": "h100-80gb-sxm",
                "region": "eu-1",
                "gpus_per_node": 8,
                "nodes": 2,
                "image": "minicloud/workload:bookworm",
                "command": ["python3", "-c", code],
            }
            submitted = await api.post("/v1/workloads", json=spec, headers={**tenant, "Idempotency-Key": "e2e-real"})
            assert submitted.status_code == 202, submitted.text
            wid = submitted.json()["workload_id"]

            async def ended() -> Any:
                doc = (await api.get(f"/v1/workloads/{wid}", headers=tenant)).json()
                return doc if doc.get("status") == "ended" else None

            doc = await until("the container to end by itself", 120, ended)
            assert (doc["outcome"], doc["exit_code"]) == ("completed", 0), doc["reason"]
            assert sorted(doc["allocation"]["hosts"]) == ["local-h1", "local-h2"]
        cli = await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).parent / "minicloud"), "workloads", "logs", wid],
            env={**os.environ, "MINICLOUD_ENDPOINT": stack.api, "MINICLOUD_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        lines = sorted(cli.stdout.splitlines())
        assert lines == ["[0]  rank 0 of 2 as 65534", "[1]  rank 1 of 2 as 65534"], cli.stdout  # not root
        placed = await first(gw, SCHEDULING_EVENTS, lambda p: isinstance(p, AllocationPlaced) and p.workload_id == wid)
        released = await until(
            "the release",
            30,
            lambda: first(gw, SCHEDULING_EVENTS, lambda p: isinstance(p, AllocationReleased) and p.workload_id == wid),
        )
        assert released.reason == "completed"
        seconds = int(released.released_at.timestamp() // 1) - int(placed.started_at.timestamp() // 1)
        charge = await until(
            "the charge",
            60,
            lambda: first(gw, BILLING_EVENTS, lambda p: isinstance(p, AllocationCharged) and p.workload_id == wid),
        )
        assert charge.gpu_seconds == 16 * seconds + 16 * max(0, 60 - seconds)
        await _limits_reach_the_container(stack, op, tenant)
    finally:
        await gw.aclose()


async def _limits_reach_the_container(stack: Stack, op: dict[str, str], tenant: dict[str, str]) -> None:
    """CPU-only work and a GPU share under the Docker runtime: the CPU and memory the
    placement gave are the container's cgroup limits, and a share sees its share."""
    code = (
        "import os\n"
        "def read(p):\n"
        "    try:\n"
        "        return open(p).read().strip().replace(' ', '/')\n"
        "    except OSError:\n"
        "        return 'none'\n"
        "g = '/sys/fs/cgroup/'\n"
        "cpu = read(g + 'cpu.max')  # cgroup v2; else v1's quota and period\n"
        "if cpu == 'none':\n"
        "    cpu = read(g + 'cpu/cpu.cfs_quota_us') + '/' + read(g + 'cpu/cpu.cfs_period_us')\n"
        "mem = read(g + 'memory.max')\n"
        "if mem == 'none':\n"
        "    mem = read(g + 'memory/memory.limit_in_bytes')\n"
        "print('limits', cpu, mem, os.environ.get('MINICLOUD_GPU_MILLI'),"
        " repr(os.environ.get('CUDA_VISIBLE_DEVICES')), flush=True)\n"
    )
    run: dict[str, Any] = {"image": "minicloud/workload:bookworm", "command": ["python3", "-c", code]}
    async with httpx.AsyncClient(base_url=stack.api, timeout=10) as api:
        shared = await api.post("/v1/hosts/local-l1/gpu-mode", json={"gpu_mode": "shared"}, headers=op)
        assert shared.status_code == 202, shared.text

        async def mode() -> Any:
            return (await api.get("/v1/hosts/local-l1", headers=op)).json()["gpu_mode"] == "shared" or None

        await until("local-l1 shared", 30, mode)
        try:
            jobs: dict[str, dict[str, Any]] = {
                "e2e-cpu": {"gpus_per_node": 0, "cpu_milli": 500, "memory_mib": 256},
                "e2e-share": {"gpus_per_node": 0, "gpu_milli": 250, "sku": "l40s-48gb-pcie", "cpu_milli": 250},
            }
            lines = {}
            for name, shape in jobs.items():
                body = {"name": name, "kind": "dev", **shape, **run}
                r = await api.post("/v1/workloads", json=body, headers={**tenant, "Idempotency-Key": name})
                assert r.status_code == 202, r.text
                where = f"/v1/workloads/{r.json()['workload_id']}"

                async def ended(where: str = where) -> Any:
                    doc = (await api.get(where, headers=tenant)).json()
                    return doc if doc.get("status") == "ended" else None

                doc = await until(f"{name} to end by itself", 120, ended)
                assert (doc["outcome"], doc["exit_code"]) == ("completed", 0), doc["reason"]
                out = (await api.get(f"{where}/logs", headers=tenant)).json()["lines"]
                lines[name] = next(ln["line"] for ln in out if ln["line"].startswith("limits")).split()
            # The cgroup's CPU quota/period and memory limit in bytes (v1 or v2): half a
            # vCPU and 256 MiB; no GPU visible.
            assert lines["e2e-cpu"][1:3] == ["50000/100000", str(256 * 2**20)], lines
            assert lines["e2e-cpu"][4] == repr("")
            assert lines["e2e-share"][1] == "25000/100000"
            assert lines["e2e-share"][3] == "250"
        finally:
            # Back to whole for the other tests; refused while inventory has yet to see the
            # share's release (host_busy), so asked again until it holds.
            async def whole() -> Any:
                if (await api.get("/v1/hosts/local-l1", headers=op)).json()["gpu_mode"] == "whole":
                    return True
                await api.post("/v1/hosts/local-l1/gpu-mode", json={"gpu_mode": "whole"}, headers=op)
                return None

            await until("local-l1 whole again", 30, whole)


async def _agent_hosts(api: httpx.AsyncClient, op: dict[str, str]) -> list[dict[str, Any]] | None:
    items = (await api.get("/v1/hosts", headers=op)).json()["items"]
    found = [h for h in items if h["host_id"].startswith("local-")]
    return found if len(found) == 3 else None


async def test_prometheus_scrapes_every_service_and_loads_the_alert_rules(stack: Stack) -> None:
    """The stack's Prometheus: every service and agent is a target that answers
    /metrics, the runtime's figures arrive per stream and group, and the alert rules
    are loaded (none of them firing on a healthy stack)."""
    prometheus = f"http://127.0.0.1:{stack.env['MINICLOUD_PROMETHEUS_PORT']}"
    async with httpx.AsyncClient(base_url=prometheus, timeout=10) as http:

        async def all_up() -> bool:
            targets = (await http.get("/api/v1/targets")).json()["data"]["activeTargets"]
            return len(targets) == 8 and all(t["health"] == "up" for t in targets)

        deadline = time.monotonic() + 90
        while not await all_up():
            assert time.monotonic() < deadline, (await http.get("/api/v1/targets")).text[:2000]
            await asyncio.sleep(1)
        lag = (await http.get("/api/v1/query", params={"query": "minicloud_stream_lag"})).json()["data"]["result"]
        groups = {(r["metric"]["stream"], r["metric"]["group"]) for r in lag}
        assert ("mc.metering.usage", "billing") in groups
        assert ("mc.scheduling.events", "gateway") in groups
        ready = (await http.get("/api/v1/query", params={"query": "minicloud_ready"})).json()["data"]["result"]
        assert len(ready) == 8
        assert all(r["value"][1] == "1" for r in ready)
        rules = (await http.get("/api/v1/rules")).json()["data"]["groups"]
        names = {r["name"] for g in rules for r in g["rules"]}
        assert {"MinicloudConsumerFallingBehind", "MinicloudDeadLetter", "MinicloudServiceDown"} <= names
        firing = (await http.get("/api/v1/alerts")).json()["data"]["alerts"]
        assert [a for a in firing if a["state"] == "firing"] == []


async def test_the_console_and_the_operators_views_work_in_the_stack(stack: Stack) -> None:
    """The gateway's image carries the console's files, and under the stack's Redis ACL
    the gateway can read every group's dead letters and write its capacity samples."""
    op = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    async with httpx.AsyncClient(base_url=stack.api, timeout=10) as api:
        page = await api.get("/console/")
        assert page.status_code == 200
        assert 'src="console.js"' in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        for asset in ("console.js", "console.css"):
            assert (await api.get(f"/console/{asset}")).status_code == 200
        signed_in = await api.post("/console/session", json={"key": OPERATOR_KEY})
        assert signed_in.status_code == 200
        assert signed_in.json()["role"] == "operator"
        assert (await api.get("/v1/tenants")).status_code == 200  # the session cookie, kept by the client
        letters = (await api.get("/v1/dead-letters", headers=op)).json()
        assert len(letters["items"]) >= 10
        assert all(i["count"] >= 0 for i in letters["items"])
        deadline = time.monotonic() + 30
        while not (await api.get("/v1/capacity/history", headers=op)).json()["items"]:
            assert time.monotonic() < deadline, "no capacity sample within 30 s"
            await asyncio.sleep(0.5)
        assert (await api.get("/v1/queue", headers=op)).status_code == 200
        assert (await api.get("/v1/revenue", headers=op)).status_code == 200
