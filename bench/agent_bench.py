"""agent.submit_to_running_p50_ms and agent.exit_to_charged_p99_ms: a workload that
really runs, from the tenant's submission to its process and from its exit to its charge.

The five services and one host agent (process runtime, a configured 8-GPU host) run as
their own processes on the bench's Redis, ticking every 0.2 s as in the tests. One at a
time, a tenant submits a 1-GPU workload whose program prints the time when it starts
and when it ends (``time.time()``, the machine's clock) and exits 0:

- submit to running: from just before the POST to the program's first printed time;
- exit to charged: from its last printed time to the ``AllocationCharged`` entry on
  billing's stream (the entry id is Redis's clock, on this machine).

Baseline, in the same run: the same program started with ``subprocess`` from this
process (``agent.spawn_baseline_ms``: what starting it costs without the cloud). The
submit-to-running ratio is to it; exit-to-charged has no raw equivalent and is
reported as measured.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.common import Result, median, until, with_ratio
from minicloud_gateway.identity import new_key
from minicloud_shared.contracts import decode
from minicloud_shared.contracts.billing import AllocationCharged
from minicloud_shared.contracts.topology import BILLING_EVENTS, SERVICES
from minicloud_shared.runtime import provision
from minicloud_shared.testing.processes import start_service, stop_services
from minicloud_shared.testing.redis_server import free_port

PROGRAM = "import time; print(time.time(), flush=True); print(time.time(), flush=True)"


def _p(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _spawn_baseline(repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.time()
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", PROGRAM], capture_output=True, text=True)
        out.append((float(done.stdout.split()[0]) - t0) * 1000)
    return out


async def run(url: str, repeats: int = 20, **_: object) -> list[Result]:
    redis = Redis.from_url(url)
    await redis.flushdb()
    await provision(redis)
    port, operator = free_port(), new_key()[1]
    workdir = Path(tempfile.mkdtemp(prefix="minicloud-bench-tasks-"))
    base = {
        "MINICLOUD_REDIS_URL": url,
        "MINICLOUD_LOG_LEVEL": "ERROR",
        "MINICLOUD_TICK_S": "0.2",
        "MINICLOUD_BLOCK_MS": "100",
        "MINICLOUD_OPERATOR_KEY": operator,
        "MINICLOUD_HEALTH_HOST": "127.0.0.1",
        "MINICLOUD_RATE_LIMIT_PER_S": "100000",
    }
    procs = [
        start_service(s, {**base, "MINICLOUD_HEALTH_PORT": str(port) if s == "gateway" else "0"}, subprocess.DEVNULL)
        for s in SERVICES
    ]
    agent = {
        **base,
        "MINICLOUD_HEALTH_PORT": "0",
        "MINICLOUD_AGENT_HOST_ID": "bench-h1",
        "MINICLOUD_AGENT_GPUS": "8 x h100-80gb-sxm",
        "MINICLOUD_AGENT_RUNTIME": "process",
        "MINICLOUD_AGENT_WORKDIR": str(workdir),
        "MINICLOUD_AGENT_POLL_S": "0.05",
    }
    procs.append(start_service("agent", agent, subprocess.DEVNULL))
    to_running: list[float] = []
    to_charged: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            op = {"Authorization": f"Bearer {operator}"}

            async def ready() -> bool:
                try:
                    r = await api.get("/v1/hosts", headers=op)
                except httpx.HTTPError:
                    return False
                return r.status_code == 200 and len(r.json()["items"]) == 1

            await until(ready, 60, "the gateway and the agent's host")
            await api.post("/v1/tenants", json={"tenant_id": "bench", "name": "bench"}, headers=op)
            key = (await api.post("/v1/tenants/bench/keys", headers=op)).json()["key"]
            tenant = {"Authorization": f"Bearer {key}"}
            for i in range(repeats):
                body: dict[str, Any] = {
                    "name": f"b{i}",
                    "kind": "training",
                    "sku": "h100-80gb-sxm",
                    "gpus_per_node": 1,
                    "image": "local",
                    "command": [sys.executable, "-c", PROGRAM],
                }
                t0 = time.time()
                r = await api.post("/v1/workloads", json=body, headers={**tenant, "Idempotency-Key": f"b{i}"})
                where = r.headers["Location"]
                lines: list[str] = []

                async def printed(where: str = where) -> bool:
                    nonlocal lines
                    got = (await api.get(f"{where}/logs", headers=tenant)).json()["lines"]
                    lines = [ln["line"] for ln in got if ln["stream"] == "stdout"]
                    return len(lines) == 2

                await until(printed, 30, f"workload {i}'s output")
                wid = where.rsplit("/", 1)[1]

                async def charged(wid: str = wid) -> bool:
                    return await _charged_at(redis, wid) is not None

                await until(charged, 30, f"workload {i}'s charge")
                at = await _charged_at(redis, wid)
                assert at is not None
                to_running.append((float(lines[0]) - t0) * 1000)
                to_charged.append((at - float(lines[1])) * 1000)
        spawn = await _spawn_baseline(repeats)
    finally:
        stop_services(procs)
        await redis.aclose()
    baseline = Result("agent.spawn_baseline_ms", median(spawn), "ms", runs=spawn, note="subprocess of the same program")
    running = Result(
        "agent.submit_to_running_p50_ms",
        median(to_running),
        "ms",
        runs=to_running,
        note=f"p99 {_p(to_running, 0.99):.0f} ms over {repeats} submissions (API to the program's first line)",
    )
    charged_p99 = Result(
        "agent.exit_to_charged_p99_ms",
        _p(to_charged, 0.99),
        "ms",
        runs=to_charged,
        note=f"p50 {median(to_charged):.0f} ms (the program's exit to AllocationCharged on billing's stream)",
    )
    return [baseline, with_ratio(running, baseline), charged_p99]


async def _charged_at(redis: Redis, workload_id: str) -> float | None:
    for entry_id, fields in await redis.xrange(BILLING_EVENTS):
        p = decode(fields).payload
        if isinstance(p, AllocationCharged) and p.workload_id == workload_id:
            return int(str(entry_id.decode()).split("-")[0]) / 1000
    return None
