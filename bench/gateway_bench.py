"""gateway.submit_per_s and gateway.get_p99_ms: the public API under load from a
separate process (this one) on loopback.

The gateway runs as its own process (``python -m minicloud_gateway``) on the bench's
Redis, with one host in its fleet projection (it refuses work the fleet cannot hold).
The load comes from 16 keep-alive connections of a lean client (``bench.rawhttp``):
httpx, at ~2 ms of client CPU a request, capped this machine at ~500 requests/s.
Submissions: POST /v1/workloads with distinct Idempotency-Keys from 16 concurrent
clients (each answer 202 means: authenticated, rate-limited, admitted, projection
created, command on the stream). Reads: GET /v1/workloads/{id} from 16 concurrent
clients for a few seconds; p99 of the latencies. Baselines, in the same run:
``gateway.noop_per_s``, GET /healthz on the same server from the same 16 clients (what
the HTTP stack costs with no work behind it), and raw redis-py XADD of the same command
entries on the same Redis (what a submission cannot do less than).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.common import Result, until, with_ratio
from bench.rawhttp import Connection
from minicloud_gateway.identity import new_key
from minicloud_shared.contracts import encode, envelope_for
from minicloud_shared.contracts.inventory import HostRegistered
from minicloud_shared.contracts.scheduling import SubmitWorkload
from minicloud_shared.runtime import provision, publish
from minicloud_shared.testing.processes import start_service, stop_services
from minicloud_shared.testing.redis_server import free_port

CONCURRENCY = 16
JOB = {"name": "bench", "kind": "training", "sku": "h100-80gb-sxm", "gpus_per_node": 1}


async def _raw_xadd(redis: Redis, n: int) -> float:
    payload = SubmitWorkload(workload_id="wl-x", client_command_id="k", **JOB)
    t0 = time.perf_counter()

    async def worker(k: int) -> None:
        for _ in range(k, n, CONCURRENCY):
            env = envelope_for(payload, producer="bench", occurred_at=_now(), tenant_id="t")
            await redis.xadd("mc.bench.raw", encode(env, payload))

    await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    return n / (time.perf_counter() - t0)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def run(url: str, n: int = 100_000, **_: object) -> list[Result]:
    submissions = 2000 if n >= 50_000 else 500
    redis = Redis.from_url(url)
    await redis.flushall()
    await provision(redis)
    operator = new_key()[1]
    port = free_port()
    env = {
        "MINICLOUD_REDIS_URL": url,
        "MINICLOUD_HEALTH_PORT": str(port),
        "MINICLOUD_OPERATOR_KEY": operator,
        "MINICLOUD_LOG_LEVEL": "ERROR",
        "MINICLOUD_RATE_LIMIT_PER_S": "1000000",
    }
    proc = start_service("gateway", env, subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as api:

            async def up() -> bool:
                try:
                    return (await api.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await until(up, 60, "the gateway answering")
            fact = HostRegistered(
                host_id="bh1",
                region="eu-1",
                zone="eu-1a",
                rack="r1",
                nvlink_domain="n1",
                sku="h100-80gb-sxm",
                gpu_ids=[f"bh1/gpu{i}" for i in range(8)],
                generation=1,
            )
            await publish(redis, fact, producer="inventory")

            async def fleet_seen() -> bool:
                return bool((await api.get("/v1/regions")).json().get("items"))

            await until(fleet_seen, 30, "the host in the gateway's projection")
            noop_n = max(submissions, 2000)
            op = {"Authorization": f"Bearer {operator}"}
            await api.post("/v1/tenants", json={"tenant_id": "bench", "name": "Bench"}, headers=op)
            key = (await api.post("/v1/tenants/bench/keys", headers=op)).json()["key"]
        # The load itself on lean keep-alive connections, one per client (rawhttp: httpx
        # would measure its own CPU on this machine).
        conns = [await Connection.open(port) for _ in range(CONCURRENCY)]
        auth = {"Authorization": f"Bearer {key}"}
        noop_latencies: list[float] = []

        async def pinger(k: int) -> None:
            for _ in range(k, noop_n, CONCURRENCY):
                t = time.perf_counter()
                status, _ = await conns[k].request("GET", "/healthz")
                if status != 200:
                    raise AssertionError("/healthz failed")
                noop_latencies.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(pinger(k) for k in range(CONCURRENCY)))
        noop_rate = noop_n / (time.perf_counter() - t0)
        ids: list[str] = []

        async def submitter(k: int) -> None:
            for i in range(k, submissions, CONCURRENCY):
                headers = {**auth, "Idempotency-Key": f"b-{i}"}
                status, body = await conns[k].request("POST", "/v1/workloads", headers, JOB)
                if status != 202:
                    raise AssertionError(f"submission answered {status}: {body[:200]!r}")
                ids.append(json.loads(body)["workload_id"])

        t0 = time.perf_counter()
        await asyncio.gather(*(submitter(k) for k in range(CONCURRENCY)))
        submit_rate = submissions / (time.perf_counter() - t0)
        latencies: list[float] = []
        stop = time.perf_counter() + 5

        async def reader(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                t = time.perf_counter()
                status, _ = await conns[k].request("GET", f"/v1/workloads/{ids[i % len(ids)]}", auth)
                latencies.append((time.perf_counter() - t) * 1000)
                if status != 200:
                    raise AssertionError(f"read answered {status}")
                i += CONCURRENCY

        await asyncio.gather(*(reader(k) for k in range(CONCURRENCY)))
        for c in conns:
            c.close()
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
        raw = await _raw_xadd(redis, submissions)
    finally:
        stop_services([proc])
        await redis.aclose()
    print(f"  {submissions} submissions at {submit_rate:,.0f}/s (noop {noop_rate:,.0f}/s, raw XADD {raw:,.0f}/s)")
    noop_latencies.sort()
    noop_p99 = noop_latencies[max(0, int(len(noop_latencies) * 0.99) - 1)]
    print(f"  reads: p50 {p50:.1f} ms, p99 {p99:.1f} ms (GET /healthz under the same load: p99 {noop_p99:.1f} ms)")
    baseline = Result(
        "raw.xadd_per_s@gateway",
        round(raw, 1),
        "events/s",
        note=f"redis-py XADD of the same commands, {CONCURRENCY} clients",
    )
    noop = Result(
        "gateway.noop_per_s",
        round(noop_rate, 1),
        "requests/s",
        note=f"GET /healthz on the same gateway process, {CONCURRENCY} clients: the HTTP stack alone",
    )
    submit = Result(
        "gateway.submit_per_s",
        round(submit_rate, 1),
        "requests/s",
        note=f"POST /v1/workloads, {CONCURRENCY} concurrent clients on loopback, one gateway process",
    )
    return [
        baseline,
        noop,
        with_ratio(submit, noop),
        with_ratio(
            Result("gateway.submit_vs_xadd", round(submit_rate, 1), "requests/s", note="the same, against raw XADD"),
            baseline,
        ),
        Result(
            "gateway.noop_p99_ms",
            round(noop_p99, 2),
            "ms",
            note=f"GET /healthz, {CONCURRENCY} clients: the latency floor of this server and client on this machine",
        ),
        Result(
            "gateway.get_p99_ms",
            round(p99, 2),
            "ms",
            note=f"GET /v1/workloads/{{id}}, {CONCURRENCY} clients for 5 s, {len(latencies)} reads; p50 {p50:.1f} ms",
        ),
    ]
