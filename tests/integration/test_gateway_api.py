"""The public API on a real Redis, with the gateway's projections and the real
scheduling service behind it (the first slice of the gateway issue: identity and
workloads). S01, S03, S05, S06 and P03 of RELIABILITY.md, for these endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from minicloud_gateway.api import create_app
from minicloud_gateway.app import build as build_gateway
from minicloud_gateway.identity import bootstrap_operator, new_key
from minicloud_scheduling.app import build as build_scheduling
from minicloud_shared.contracts import decode
from minicloud_shared.contracts.scheduling import WorkloadQueued
from minicloud_shared.contracts.topology import SCHEDULING_EVENTS
from minicloud_shared.runtime import Health, ServiceRuntime, publish
from minicloud_shared.runtime.entrypoint import create_runtime
from minicloud_shared.settings import Settings
from tests.integration.test_scheduling_service import one_host
from tests.support.harness import wait_until

pytestmark = pytest.mark.broker
_, OPERATOR_KEY = new_key()
OP = {"Authorization": f"Bearer {OPERATOR_KEY}"}
JOB = {"name": "ft", "kind": "fine_tuning", "sku": "h100-80gb-sxm", "gpus_per_node": 2}


def rt(service: str, redis_url: str) -> ServiceRuntime:
    build = build_gateway if service == "gateway" else build_scheduling
    settings = Settings(service=service, redis_url=redis_url, block_ms=50, log_level="WARNING", log_format="console")
    return create_runtime(service, build, settings)


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Redis]]:
    redis = Redis.from_url(redis_url)
    runtimes = [rt("gateway", redis_url), rt("scheduling", redis_url)]
    for r in runtimes:
        await r.start()
    await bootstrap_operator(redis, OPERATOR_KEY)
    app = create_app(redis, runtimes[0].health, runtime_metrics=runtimes[0].metrics_text)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        await one_host(redis)  # the gateway refuses what the fleet could never hold
        await wait_until(lambda: _projected(client), 10, "the host in the gateway's projection")
        yield client, redis
    for r in runtimes:
        await r.stop()
    await redis.aclose()


async def _projected(client: httpx.AsyncClient) -> bool:
    return bool((await client.get("/v1/regions")).json()["items"])


async def tenant_key(client: httpx.AsyncClient, tenant: str) -> dict[str, str]:
    r = await client.post("/v1/tenants", json={"tenant_id": tenant, "name": tenant.title()}, headers=OP)
    assert r.status_code in (201, 409), r.text
    r = await client.post(f"/v1/tenants/{tenant}/keys", headers=OP)
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert key.startswith("mck_")
    return {"Authorization": f"Bearer {key}"}


async def accepted(redis: Redis) -> list[Any]:
    return [
        e.payload
        for e in (decode(f) for _, f in await redis.xrange(SCHEDULING_EVENTS))
        if e.envelope.event_type.endswith("workload_accepted")
    ]


async def test_submit_watch_and_complete_a_workload(api: tuple[httpx.AsyncClient, Redis]) -> None:
    client, _ = api
    acme = await tenant_key(client, "acme")
    r = await client.post("/v1/workloads", json=JOB, headers={**acme, "Idempotency-Key": "k1"})
    assert r.status_code == 202, r.text
    wid = r.json()["workload_id"]
    assert r.headers["Location"] == f"/v1/workloads/{wid}"

    async def running() -> bool:
        got = await client.get(f"/v1/workloads/{wid}", headers=acme)
        return got.status_code == 200 and bool(got.json()["status"] == "running")

    await wait_until(running, 10, "the workload running")
    doc = (await client.get(f"/v1/workloads/{wid}", headers=acme)).json()
    assert doc["allocation"]["gpus"] == 2
    listed = (await client.get("/v1/workloads", headers=acme)).json()
    assert [w["workload_id"] for w in listed["items"]] == [wid]
    assert (await client.post(f"/v1/workloads/{wid}/complete", headers=acme)).status_code == 202

    async def ended() -> bool:
        return bool((await client.get(f"/v1/workloads/{wid}", headers=acme)).json()["status"] == "ended")

    await wait_until(ended, 10, "the workload ended")


async def test_p03_ten_concurrent_submissions_with_one_key_create_one_workload(
    api: tuple[httpx.AsyncClient, Redis],
) -> None:
    client, redis = api
    acme = await tenant_key(client, "acme")
    headers = {**acme, "Idempotency-Key": "same-key"}
    answers = await asyncio.gather(*(client.post("/v1/workloads", json=JOB, headers=headers) for _ in range(10)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["workload_id"] for a in answers}) == 1
    await wait_until(lambda: _count(redis, 1), 10, "the workload accepted")
    # A barrier, not a sleep: scheduling reads its commands in order, so once a later
    # submission is accepted, every copy before it was handled.
    barrier = await client.post("/v1/workloads", json=JOB, headers={**acme, "Idempotency-Key": "barrier"})
    assert barrier.status_code == 202
    await wait_until(lambda: _count(redis, 2), 10, "the barrier accepted")
    assert len(await accepted(redis)) == 2  # the ten copies made one workload, and the barrier
    other = await client.post("/v1/workloads", json={**JOB, "gpus_per_node": 4}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"


async def _count(redis: Redis, n: int) -> bool:
    return len(await accepted(redis)) >= n


async def test_s05_missing_malformed_and_revoked_keys_answer_401(api: tuple[httpx.AsyncClient, Redis]) -> None:
    client, _ = api
    acme = await tenant_key(client, "acme")
    assert (await client.get("/v1/workloads", headers=acme)).status_code == 200
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": f"Bearer {new_key()[1]}"},
    ):
        r = await client.get("/v1/workloads", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthenticated"
    key_id = acme["Authorization"].split("_")[1]
    assert (await client.delete(f"/v1/tenants/acme/keys/{key_id}", headers=OP)).status_code == 204
    assert (await client.get("/v1/workloads", headers=acme)).status_code == 401  # at once, not within 5 s
    assert (await client.post("/v1/tenants", json={"tenant_id": "x1x", "name": "X"}, headers=acme)).status_code == 401


async def test_s03_unknown_fields_and_bad_values_are_refused(api: tuple[httpx.AsyncClient, Redis]) -> None:
    client, _ = api
    acme = await tenant_key(client, "acme")
    for body in ({**JOB, "tenant_id": "someone-else"}, {**JOB, "gpus_per_node": -1}, {"name": "x"}):
        r = await client.post("/v1/workloads", json=body, headers={**acme, "Idempotency-Key": "k"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_request"
    # No GPU and no CPU asked: a shape that is none of the three, said in words.
    r = await client.post("/v1/workloads", json={**JOB, "gpus_per_node": 0}, headers={**acme, "Idempotency-Key": "k"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_shape")
    big = await client.post(
        "/v1/workloads",
        content=b"x" * 70_000,
        headers={**acme, "Idempotency-Key": "k", "Content-Type": "application/json"},
    )
    assert big.status_code == 413
    tenant_only = await client.post("/v1/tenants", json={"tenant_id": "abc", "name": "A"}, headers=acme)
    assert tenant_only.status_code == 403


async def test_s01_another_tenants_workload_answers_like_a_missing_one(api: tuple[httpx.AsyncClient, Redis]) -> None:
    client, _ = api
    acme, evil = await tenant_key(client, "acme"), await tenant_key(client, "evil")
    wid = (await client.post("/v1/workloads", json=JOB, headers={**acme, "Idempotency-Key": "k"})).json()["workload_id"]
    await wait_until(lambda: _visible(client, acme, wid), 10, "the workload projected")
    for path in (f"/v1/workloads/{wid}", "/v1/workloads/wl-does-not-exist"):
        r = await client.get(path, headers=evil)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
    for action in ("complete", "cancel"):
        assert (await client.post(f"/v1/workloads/{wid}/{action}", headers=evil)).status_code == 404
    assert (await client.get("/v1/workloads", headers=evil)).json()["items"] == []


async def _visible(client: httpx.AsyncClient, headers: dict[str, str], wid: str) -> bool:
    return (await client.get(f"/v1/workloads/{wid}", headers=headers)).status_code == 200


async def test_s06_no_plaintext_key_is_kept_in_redis(api: tuple[httpx.AsyncClient, Redis]) -> None:
    client, redis = api
    acme = await tenant_key(client, "acme")
    key = acme["Authorization"].removeprefix("Bearer ")
    secret = key.split("_", 2)[2]
    async for k in redis.scan_iter(count=1000):
        kind = (await redis.type(k)).decode()
        if kind == "hash":
            values = b" ".join(x for kv in (await redis.hgetall(k)).items() for x in kv)
        elif kind == "string":
            values = bytes(await redis.get(k) or b"")
        else:
            continue
        assert secret.encode() not in values + k
        assert OPERATOR_KEY.split("_", 2)[2].encode() not in values + k


async def test_a_key_over_its_rate_gets_429_with_retry_after(redis_url: str) -> None:
    from minicloud_shared.runtime import Health

    redis = Redis.from_url(redis_url)
    await bootstrap_operator(redis, OPERATOR_KEY)
    app = create_app(redis, Health(), rate_per_s=5)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        answers = [
            await client.post("/v1/tenants", json={"tenant_id": f"t{i:03d}", "name": "T"}, headers=OP)
            for i in range(12)
        ]
    await redis.aclose()
    codes = [a.status_code for a in answers]
    limited = [a for a in answers if a.status_code == 429]
    assert codes.count(201) >= 5
    assert limited, codes
    assert all(a.headers["Retry-After"].isdigit() for a in limited)
    assert limited[0].json()["error"]["code"] == "rate_limited"


async def test_skus_and_prices_are_public_and_quotes_use_the_price_list(api: tuple[httpx.AsyncClient, Redis]) -> None:
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from minicloud_shared.contracts.billing import PriceCatalogPublished, PriceRow
    from minicloud_shared.runtime import publish

    client, redis = api
    skus = (await client.get("/v1/skus")).json()["items"]
    assert "h100-80gb-sxm" in {s["sku"] for s in skus}
    listed = (await client.get("/v1/prices")).json()
    h100 = next(p for p in listed["prices"] if (p["sku"], p["price_class"]) == ("h100-80gb-sxm", "on_demand"))
    assert (listed["version"], h100["per_gpu_hour"], listed["currency"]) == ("2026-01", "2.99", "USD")
    later = datetime.now(UTC) + timedelta(days=3)
    cut = PriceCatalogPublished(
        version="cut-1",
        effective_at=later,
        currency="USD",
        prices=[PriceRow(sku="h100-80gb-sxm", price_class="on_demand", per_gpu_hour=Decimal("2.39"))],
    )
    await publish(redis, cut, producer="billing")

    async def announced() -> bool:
        return [v["version"] for v in (await client.get("/v1/prices")).json()["upcoming"]] == ["cut-1"]

    await wait_until(announced, 10, "the announced price cut")
    acme = await tenant_key(client, "acme")
    q = await client.get("/v1/quote", params={"sku": "h100-80gb-sxm", "gpus": 8, "hours": 1}, headers=acme)
    assert q.status_code == 200, q.text
    assert (q.json()["amount"], q.json()["currency"]) == ("23.92", "USD")
    # Four days from now crosses the cut: part at 2.99, part at 2.39.
    long = (await client.get("/v1/quote", params={"sku": "h100-80gb-sxm", "gpus": 1, "hours": 96}, headers=acme)).json()
    assert [p["catalog_version"] for p in long["parts"]] == ["2026-01", "cut-1"]
    assert (await client.get("/v1/quote", params={"sku": "h100-80gb-sxm", "gpus": 1, "hours": 1})).status_code == 401
    nope = await client.get("/v1/quote", params={"sku": "tpu-v9", "gpus": 1, "hours": 1}, headers=acme)
    assert (nope.status_code, nope.json()["error"]["code"]) == (404, "not_priced")


async def test_listing_pages_through_every_workload_once(api: tuple[httpx.AsyncClient, Redis]) -> None:
    client, _ = api
    acme = await tenant_key(client, "acme")
    made = [
        (await client.post("/v1/workloads", json=JOB, headers={**acme, "Idempotency-Key": f"p{i}"})).json()[
            "workload_id"
        ]
        for i in range(7)
    ]
    seen: list[str] = []
    after: str | None = None
    while True:
        page = (
            await client.get("/v1/workloads", params={"limit": 3, **({"after": after} if after else {})}, headers=acme)
        ).json()
        assert len(page["items"]) <= 3
        seen += [w["workload_id"] for w in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert sorted(seen) == sorted(made)
    assert len(seen) == len(set(seen))


async def test_readyz_waits_until_the_projections_caught_up(redis_url: str) -> None:
    """A gateway that starts behind a backlog answers 503 on /readyz (with how far behind
    it is) until its projections have read it, then 200."""
    redis = Redis.from_url(redis_url)
    first = rt("gateway", redis_url)
    await first.start()  # its groups exist from here on
    await first.stop()
    for i in range(50):  # facts published while no gateway reads
        await publish(redis, WorkloadQueued(workload_id=f"wl-{i}", code="capacity", reason="r"), producer="scheduling")
    health = Health()
    health.set_ready()
    app = create_app(redis, health, max_lag=10)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["projection_lag"][SCHEDULING_EVENTS] == 50
        assert "catching up" in r.json()["reasons"][0]
        second = rt("gateway", redis_url)
        await second.start()
        try:
            await wait_until(lambda: _ready(client), 10, "the projections to catch up")
        finally:
            await second.stop()
    await redis.aclose()


async def _ready(client: httpx.AsyncClient) -> bool:
    r = await client.get("/readyz")
    return r.status_code == 200 and r.json()["projection_lag"][SCHEDULING_EVENTS] == 0


async def test_the_openapi_document_states_auth_errors_and_405s_allow(api: tuple[httpx.AsyncClient, Redis]) -> None:
    """Issue 10 (12): auth is a bearer security scheme (not an optional header), every
    operation documents its errors with the body the API sends, 2xx bodies are closed
    schemas, and a 405 says what is allowed."""
    client, _ = api
    doc = (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: Authorization: Bearer mck_<id>_<secret>",
    }
    submit = doc["paths"]["/v1/workloads"]["post"]
    assert submit["security"] == [{"HTTPBearer": []}]
    assert "authorization" not in [p["name"].lower() for p in submit.get("parameters", [])]
    for code in ("400", "401", "402", "409", "413", "422", "429", "503"):
        assert submit["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }, code
    assert "Retry-After" in submit["responses"]["429"]["headers"]
    accepted = doc["components"]["schemas"]["Accepted"]
    assert accepted["additionalProperties"] is False
    r = await client.delete("/v1/workloads")
    assert r.status_code == 405
    assert set(r.headers["Allow"].split(", ")) == {"GET", "POST"}
    assert r.json()["error"]["code"] == "method_not_allowed"
    as_json = {**OP, "Content-Type": "application/json"}
    bad = await client.post("/v1/tenants", content=b"{not json", headers=as_json)
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_request")
    assert bad.json()["error"]["message"] == "the body is not valid JSON (at character 1)"
    undecodable = await client.post("/v1/tenants", content=b"\xff\xfe\x00", headers=as_json)
    assert (undecodable.status_code, undecodable.json()["error"]["code"]) == (400, "bad_request")


async def test_metrics_count_requests_by_route_template_and_status_and_show_the_projections(
    api: tuple[httpx.AsyncClient, Redis],
) -> None:
    """``GET /metrics``: requests by route template (never the id in the path) and
    status, 429s included, and the projections' runtime figures."""
    from tests.support.harness import samples

    client, _ = api
    acme = await tenant_key(client, "acme")
    for wid in ("wl-one", "wl-two", "wl-three"):
        assert (await client.get(f"/v1/workloads/{wid}", headers=acme)).status_code == 404
    assert (await client.get("/v1/workloads/wl-one")).status_code == 401
    assert (await client.get("/no/such/path")).status_code == 404
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(r.text)
    route = ("route", "/v1/workloads/{workload_id}")
    assert got[("minicloud_gateway_requests_total", (("method", "GET"), route, ("status", "404")))] == 3
    assert got[("minicloud_gateway_requests_total", (("method", "GET"), route, ("status", "401")))] == 1
    assert (
        got[("minicloud_gateway_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    )
    assert got[("minicloud_gateway_request_seconds_count", (("method", "GET"), route))] == 4
    assert not any("wl-one" in v for _, labels in got for _, v in labels)  # ids never become labels
    projections = [k for k in got if k[0] == "minicloud_stream_lag"]
    assert projections
    assert all(dict(labels)["group"] == "gateway" for _, labels in projections)
    assert got[("minicloud_redis_connected_clients", ())] >= 1  # Redis' own figures, read by the gateway
    assert got[("minicloud_redis_used_memory_bytes", ())] > 0
    assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


async def test_one_request_id_follows_a_workload_from_the_api_to_its_charge(redis_url: str) -> None:
    """The request's X-Request-Id (answered back) is the correlation id of everything
    made on the workload's behalf, by every service: its command, acceptance,
    placement and start (made by scheduling, on whatever triggered them), its usage
    records (metering) and its charge (billing). Causation still names the trigger."""
    from minicloud_billing.app import build as build_billing
    from minicloud_metering.app import build as build_metering
    from minicloud_shared.contracts.topology import BILLING_EVENTS, METERING_USAGE, SCHEDULING_COMMANDS

    def runtime(service: str, build: Any) -> ServiceRuntime:
        settings = Settings(
            service=service, redis_url=redis_url, block_ms=50, log_level="WARNING", log_format="console"
        )
        return create_runtime(service, build, settings)

    redis = Redis.from_url(redis_url)
    runtimes = [
        runtime("gateway", build_gateway),
        runtime("scheduling", build_scheduling),
        runtime("metering", build_metering),
        runtime("billing", build_billing),
    ]
    for r in runtimes:
        await r.start()
    try:
        await bootstrap_operator(redis, OPERATOR_KEY)
        app = create_app(redis, runtimes[0].health)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            await one_host(redis)
            await wait_until(lambda: _projected(client), 10, "the host in the gateway's projection")
            acme = await tenant_key(client, "acme")
            resp = await client.post(
                "/v1/workloads", json=JOB, headers={**acme, "Idempotency-Key": "k-trace", "X-Request-Id": "req-trace-1"}
            )
            assert resp.status_code == 202, resp.text
            assert resp.headers["x-request-id"] == "req-trace-1"
            wid = resp.json()["workload_id"]
            await wait_until(lambda: _status(client, wid, acme, "running"), 10, "the workload to run")
            done = await client.post(f"/v1/workloads/{wid}/complete", headers={**acme, "X-Request-Id": "bad id!"})
            assert done.status_code == 202, done.text
            assert done.headers["x-request-id"] != "bad id!"  # not a plain token: a new id instead
            await wait_until(lambda: _charged_events(redis), 15, "the workload charged")
            await wait_until(lambda: _traced(client, wid, acme), 10, "the charge and invoice line in the trace")
            trace = (await client.get(f"/v1/workloads/{wid}/trace", headers=acme)).json()
            charge_seconds = (await client.get(f"/v1/workloads/{wid}", headers=acme)).json()["charge"]["gpu_seconds"]
            other = await tenant_key(client, "other")
            assert (await client.get(f"/v1/workloads/{wid}/trace", headers=other)).status_code == 404
    finally:
        for r in runtimes:
            await r.stop()
    entries = [
        decode(f)
        for stream in (SCHEDULING_COMMANDS, SCHEDULING_EVENTS, METERING_USAGE, BILLING_EVENTS)
        for _, f in await redis.xrange(stream)
    ]
    await redis.aclose()
    mine = [e for e in entries if getattr(e.payload, "workload_id", None) == wid]
    kinds = {e.envelope.event_type.rsplit(".", 1)[1]: e.envelope for e in mine}
    for kind in (
        "submit_workload",
        "workload_accepted",
        "allocation_placed",
        "workload_started",
        "allocation_released",
        "usage_recorded",
        "allocation_charged",
    ):
        assert kind in kinds, sorted(kinds)
        assert kinds[kind].correlation_id == "req-trace-1", (kind, kinds[kind])
    # The completing request has an id of its own; what it triggered keeps the
    # workload's correlation and names the completion as its cause.
    complete = kinds["complete_workload"]
    assert complete.correlation_id not in ("req-trace-1", "bad id!")
    assert kinds["allocation_released"].causation_id == complete.event_id
    assert kinds["allocation_placed"].causation_id == kinds["submit_workload"].event_id
    # The trace the API answers (and `minicloud workloads trace` prints): the same chain.
    assert trace["correlation_id"] == "req-trace-1"
    seen = [s["type"].rsplit(".", 1)[1] for s in trace["steps"]]
    for kind in ("workload_accepted", "allocation_placed", "workload_started", "workload_ended", "allocation_charged"):
        assert kind in seen, seen
    assert [s["at"] for s in trace["steps"]] == sorted(s["at"] for s in trace["steps"])
    assert all(s["correlation_id"] == "req-trace-1" for s in trace["steps"])
    lines = {ln["line_id"].split("|")[0]: ln for ln in trace["invoice_lines"]}  # its invoice lines, by kind
    assert set(lines) <= {"usage", "minimum"}
    assert sum(ln["gpu_seconds"] for ln in trace["invoice_lines"]) == charge_seconds


async def _status(client: httpx.AsyncClient, wid: str, headers: dict[str, str], status: str) -> bool:
    return bool((await client.get(f"/v1/workloads/{wid}", headers=headers)).json().get("status") == status)


async def _charged_events(redis: Redis) -> bool:
    from minicloud_shared.contracts.topology import BILLING_EVENTS

    return any(f[b"type"].endswith(b"allocation_charged") for _, f in await redis.xrange(BILLING_EVENTS))


async def _traced(client: httpx.AsyncClient, wid: str, headers: dict[str, str]) -> bool:
    trace = (await client.get(f"/v1/workloads/{wid}/trace", headers=headers)).json()
    charged = any(s["type"].endswith("allocation_charged") for s in trace["steps"])
    return charged and bool(trace["invoice_lines"])
