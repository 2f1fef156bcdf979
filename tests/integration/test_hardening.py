"""The cloud as a hostile tenant and an unlucky operator would try it (issue 10): each
test runs the five services as processes on a real Redis and speaks HTTP to the real
gateway, and each asserts what failed before the fix."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from minicloud_gateway.store import create_doc, op_key
from minicloud_shared.contracts import encode, envelope_for
from minicloud_shared.contracts.billing import PriceRow, PublishPriceCatalog
from minicloud_shared.contracts.topology import BILLING_COMMANDS, SCHEDULING_COMMANDS
from minicloud_shared.testing.redis_server import start_process
from tests.support.cloud import Cloud, host_body, local_cloud, poll, settled

pytestmark = [pytest.mark.broker, pytest.mark.slow]
JOB = {"name": "ft", "kind": "fine_tuning", "sku": "h100-80gb-sxm", "gpus_per_node": 1, "region": "eu-1"}


@pytest.fixture
def cloud(redis_url: str) -> Iterator[Cloud]:
    # Redis's memory is read on every request, so a test can move maxmemory under it.
    with local_cloud(redis_url, MINICLOUD_MEMORY_CHECK_S="0") as c:
        yield c


def _tenant(client: httpx.Client, cloud: Cloud, tenant_id: str) -> dict[str, str]:
    assert client.post("/v1/tenants", json={"tenant_id": tenant_id, "name": tenant_id}, headers=cloud.op).status_code
    r = client.post(f"/v1/tenants/{tenant_id}/keys", headers=cloud.op)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def _host(client: httpx.Client, cloud: Cloud, i: int = 1, **changes: Any) -> None:
    done = settled(client, client.post("/v1/hosts", json={**host_body(i), **changes}, headers=cloud.op), cloud.op)
    assert done["status"] == "done", done


def _answer(
    client: httpx.Client, status: int, body: dict[str, Any], key: dict[str, str], idem: str
) -> httpx.Response | None:
    """The answer to a submission if it has ``status`` (for ``poll``), else None."""
    got = client.post("/v1/workloads", json=body, headers={**key, "Idempotency-Key": idem})
    return got if got.status_code == status else None


def _stored(r: redis.Redis, tenant: str) -> tuple[int, int, int]:
    """What a tenant's submissions left in Redis: workload documents, index entries, commands."""
    docs = sum(1 for _ in r.scan_iter(f"mc:gateway:wl:{tenant}:*", count=1000))
    commands = [f for _, f in r.xrange(SCHEDULING_COMMANDS) if tenant.encode() in f.values()]
    return docs, int(r.zcard(f"mc:gateway:wls:{tenant}")), len(commands)


def test_a_tenant_cannot_fill_redis_and_refused_work_stores_nothing(cloud: Cloud) -> None:
    r = redis.Redis.from_url(cloud.redis_url)
    with httpx.Client(base_url=cloud.endpoint, timeout=30) as client:
        _host(client, cloud)
        acme = _tenant(client, cloud, "acme")
        submit = {**acme, "Idempotency-Key": "k1"}
        before = _stored(r, "acme")

        # A chunked 8 MiB body has no Content-Length: the bytes read are counted.
        def chunks() -> Iterator[bytes]:
            yield b'{"name": "x", "kind": "training", "gpus_per_node": 1, "region": "'
            for _ in range(128):
                yield b"a" * 65536
            yield b'"}'

        big = client.post("/v1/workloads", content=chunks(), headers={**submit, "Content-Type": "application/json"})
        assert big.status_code == 413, big.text
        assert big.json()["error"]["code"] == "body_too_large"
        # Strings are bounded by what their contract allows (a 10 KB region is not a region).
        change: dict[str, Any]
        for change in ({"region": "r" * 10_000}, {"sku": "s" * 200}, {"name": "n" * 101}, {"region": "EU 1"}):
            refused = client.post("/v1/workloads", json={**JOB, **change}, headers=submit)
            assert (refused.status_code, refused.json()["error"]["code"]) == (422, "invalid_request"), change
        # What the fleet could never hold is refused with the reason.
        impossible: list[tuple[dict[str, Any], str]] = [
            ({"sku": "z9000"}, "unknown_sku"),
            ({"region": "mars-1"}, "unknown_region"),
            ({"sku": "a100-80gb-sxm"}, "no_such_capacity"),
            ({"gpus_per_node": 8, "nodes": 2}, "no_such_capacity"),
            ({"sku": None, "region": None, "gpus_per_node": 16}, "no_such_capacity"),
        ]
        for change, code in impossible:
            refused = client.post("/v1/workloads", json={**JOB, **change}, headers=submit)
            assert (refused.status_code, refused.json()["error"]["code"]) == (422, code), refused.text
            assert refused.json()["error"]["message"]
        assert _stored(r, "acme") == before == (0, 0, 0)

        # Near maxmemory the gateway refuses new work, so the services' commits keep room.
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", str(int(used / 0.9)))
        try:
            full = poll("the storage guard", 5, lambda: _answer(client, 503, JOB, acme, "k1"))
            assert full.json()["error"]["code"] == "storage_full"
            assert full.headers["Retry-After"].isdigit()
            assert _stored(r, "acme") == before == (0, 0, 0)
            assert client.get("/v1/workloads", headers=acme).status_code == 200  # reads still work
        finally:
            r.config_set("maxmemory", "0")
        ok = poll("the guard lifted", 5, lambda: _answer(client, 202, JOB, acme, "k1"))
        assert ok.json()["status"] == "submitted"
        assert _stored(r, "acme") == (1, 1, 1)

        # A tenant its budget blocks is refused at the gateway, with nothing stored:
        # a funded account without credit (prepaid, nothing paid) is blocked at once.
        account = client.put("/v1/accounts/acme", json={"credit_limit": "0"}, headers=cloud.op)
        assert settled(client, account, cloud.op)["status"] == "done"
        blocked = poll("the budget stop at the gateway", 10, lambda: _answer(client, 402, JOB, acme, "k2"))
        assert blocked.json()["error"]["code"] == "budget"
        assert _stored(r, "acme") == (1, 1, 1)
    r.close()


def test_guessing_keys_and_anonymous_floods_are_rate_limited_and_input_is_strict(cloud: Cloud) -> None:
    with httpx.Client(base_url=cloud.endpoint, timeout=30) as client:
        _host(client, cloud)
        acme = _tenant(client, cloud, "acme")
        # Anonymous requests and bad keys count against the client's address (20 a second).
        anonymous = [client.get("/v1/prices").status_code for _ in range(60)]
        assert anonymous[0] == 200
        assert 429 in anonymous
        time.sleep(1.1)  # the next one-second window (bounded)
        bad = {"Authorization": "Bearer mck_000000000000_" + "x" * 43}
        guesses = [client.get("/v1/workloads", headers=bad) for _ in range(60)]
        assert {g.status_code for g in guesses} == {401, 429}
        limited = next(g for g in guesses if g.status_code == 429)
        assert limited.json()["error"]["code"] == "rate_limited"
        assert limited.headers["Retry-After"].isdigit()
        # A valid key has its own budget, whatever its address did.
        assert client.get("/v1/workloads", headers=acme).status_code == 200
        # The scheme is case-insensitive.
        lower = {"Authorization": acme["Authorization"].replace("Bearer", "bearer")}
        assert client.get("/v1/workloads", headers=lower).status_code == 200
        # Control characters and bidirectional overrides are refused in names; true is not 1.
        for change in ({"name": "x\x1b[31mred"}, {"name": "a\u202eb"}, {"gpus_per_node": True}, {"nodes": "2"}):
            r = client.post("/v1/workloads", json={**JOB, **change}, headers={**acme, "Idempotency-Key": "c"})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request"), change
        named = client.post("/v1/tenants", json={"tenant_id": "evil", "name": "\x07bell"}, headers=cloud.op)
        assert named.status_code == 422
        # Keys: listed with when they were issued and used; revoked ones are not active.
        second = client.post("/v1/tenants/acme/keys", headers=cloud.op).json()["key_id"]
        assert client.delete(f"/v1/tenants/acme/keys/{second}", headers=cloud.op).status_code == 204
        keys = client.get("/v1/tenants/acme/keys", headers=cloud.op).json()["items"]
        assert len(keys) == 2
        used = next(k for k in keys if k["key_id"] != second)
        assert (used["revoked"], used["last_used_at"] is not None) == (False, True)
        gone = next(k for k in keys if k["key_id"] == second)
        assert (gone["revoked"], gone["revoked_at"] is not None, gone["last_used_at"]) == (True, True, None)
        row = next(t for t in client.get("/v1/tenants", headers=cloud.op).json()["items"] if t["tenant_id"] == "acme")
        assert (row["keys_issued"], row["keys_active"]) == (2, 1)
        assert client.get("/v1/tenants/nobody/keys", headers=cloud.op).status_code == 404


def test_idempotency_keys_are_scoped_and_name_one_thing_for_good(cloud: Cloud) -> None:
    r = redis.Redis.from_url(cloud.redis_url)
    with httpx.Client(base_url=cloud.endpoint, timeout=30) as client:
        _host(client, cloud)
        for t in ("acme", "beta"):
            _tenant(client, cloud, t)
        # (a) The operator's key and body used for acme, sent for beta: beta is credited too.
        credit = {"amount": "100.00", "reference": "grant-1"}
        same = {**cloud.op, "Idempotency-Key": "grant-1"}
        a = settled(client, client.post("/v1/accounts/acme/credits", json=credit, headers=same), cloud.op)
        b = settled(client, client.post("/v1/accounts/beta/credits", json=credit, headers=same), cloud.op)
        assert a["operation_id"] != b["operation_id"]
        assert a["status"] == b["status"] == "done"
        for t in ("acme", "beta"):
            poll(
                f"{t}'s credit",
                10,
                lambda t=t: client.get(f"/v1/accounts/{t}", headers=cloud.op).json().get("credits") == "100.00",
            )
        # The same key and body for acme again: the same operation, credited once.
        again = client.post("/v1/accounts/acme/credits", json=credit, headers=same)
        assert again.json()["operation_id"] == a["operation_id"]
        other = client.post("/v1/accounts/acme/credits", json={**credit, "amount": "5.00"}, headers=same)
        assert (other.status_code, other.json()["error"]["code"]) == (409, "idempotency_key_reused")
        # (b) A workload's key names it for good: long after (the 24-hour records that
        # used to hold the check are gone), another body with the key is still refused.
        acme = _tenant(client, cloud, "gamma")
        first = client.post("/v1/workloads", json=JOB, headers={**acme, "Idempotency-Key": "train-1"})
        assert first.status_code == 202
        for k in r.scan_iter("mc:gateway:idem:*"):
            r.delete(k)
        keyed = {**acme, "Idempotency-Key": "train-1"}
        reused = client.post("/v1/workloads", json={**JOB, "name": "other"}, headers=keyed)
        assert (reused.status_code, reused.json()["error"]["code"]) == (409, "idempotency_key_reused")
        replay = client.post("/v1/workloads", json=JOB, headers=keyed)
        assert replay.json()["workload_id"] == first.json()["workload_id"]
        assert "request_digest" not in client.get(first.headers["Location"], headers=acme).json()
    r.close()


def test_redis_away_answers_503_json_and_the_cloud_recovers_after_it_restarts(tmp_path: Any) -> None:
    """Redis stopped under a running gateway (with its data on disk, as a restart does):
    every call answers 503 JSON with Retry-After; once it is back, the services carry on."""
    data = tmp_path / "redis"
    data.mkdir()
    server = start_process(appendonly=True, workdir=str(data))
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    try:
        with local_cloud(server.url) as c, httpx.Client(base_url=c.endpoint, timeout=30) as client:
            _host(client, c)
            acme = _tenant(client, c, "acme")
            server.stop()
            for method, path, headers in (
                ("GET", "/v1/workloads", acme),
                ("POST", "/v1/workloads", {**acme, "Idempotency-Key": "during"}),
                ("GET", "/v1/prices", {}),
                ("GET", "/v1/capacity", c.op),
            ):
                r = client.request(method, path, json=JOB if method == "POST" else None, headers=headers)
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert r.headers["content-type"] == "application/json"
                assert r.json()["error"]["code"] == "unavailable"
                assert r.headers["Retry-After"].isdigit()
            # The CLI waits a 503 out (bounded), saying what it waits for.
            env = {**os.environ, "MINICLOUD_ENDPOINT": c.endpoint, "MINICLOUD_CONFIG": "/nonexistent"}
            env["MINICLOUD_API_KEY"] = acme["Authorization"].removeprefix("Bearer ")
            said = tmp_path / "cli.err"
            with said.open("w") as errors:
                cli = subprocess.Popen(
                    [sys.executable, "-m", "minicloud_client.cli", "workloads", "list", "--json"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    text=True,
                )
                poll("the CLI to wait for the API", 10, lambda: "retrying in" in said.read_text())
                server = start_process(port=int(port), appendonly=True, workdir=str(data))
                out, _ = cli.communicate(timeout=60)
            assert cli.returncode == 0, said.read_text()
            assert "minicloud: unavailable: the cloud's store is not reachable" in said.read_text()
            assert json.loads(out) == []
            # The services reconnect by themselves: a submission runs, end to end.
            ok = poll("the API back", 30, lambda: _answer(client, 202, JOB, acme, "after"))
            where = ok.headers["Location"]
            poll("the workload running", 30, lambda: client.get(where, headers=acme).json()["status"] == "running")
    finally:
        server.stop()


def test_naive_times_are_refused_and_a_dead_lettered_command_fails_its_operation(cloud: Cloud) -> None:
    r = redis.Redis.from_url(cloud.redis_url)
    with httpx.Client(base_url=cloud.endpoint, timeout=30) as client:
        version = {
            "version": "v-naive",
            "prices": [{"sku": "h100-80gb-sxm", "price_class": "on_demand", "per_gpu_hour": "2.5"}],
        }
        naive = client.post(
            "/v1/prices/versions", json={**version, "effective_at": "2030-01-01T00:00:00"}, headers=cloud.op
        )
        assert (naive.status_code, naive.json()["error"]["code"]) == (422, "invalid_request")
        assert "effective_at" in naive.json()["error"]["message"]
        # One sent as an older gateway did (naive, on the stream): billing dead-letters it,
        # and the operation the gateway follows fails with the reason instead of staying pending.
        command = PublishPriceCatalog(
            version="v-old",
            effective_at=datetime(2030, 1, 1, tzinfo=UTC),
            currency="USD",
            prices=[PriceRow(sku="h100-80gb-sxm", price_class="on_demand", per_gpu_hour=Decimal("2.5"))],
        )
        envelope = envelope_for(command, producer="gateway", occurred_at=datetime.now(UTC))
        fields = encode(envelope, command)
        fields["data"] = fields["data"].replace("2030-01-01T00:00:00Z", "2030-01-01T00:00:00")
        assert '2030-01-01T00:00:00"' in fields["data"]
        asyncio.run(_create_operation(cloud.redis_url, envelope.event_id))
        r.xadd(BILLING_COMMANDS, fields)
        where = f"/v1/operations/{envelope.event_id}"
        failed = poll(
            "the operation to fail",
            15,
            lambda: (d := client.get(where, headers=cloud.op).json())["status"] != "pending" and d,
        )
        assert (failed["status"], failed["code"]) == ("failed", "dead_lettered"), failed
        assert "billing" in failed["message"]
        assert "effective_at" in failed["message"]
        versions = client.get("/v1/prices/versions").json()["items"]
        assert "v-old" not in [v["version"] for v in versions]
    r.close()


async def _create_operation(url: str, operation_id: str) -> None:
    """The pending operation the gateway writes before it publishes a command."""
    client = AsyncRedis.from_url(url)
    pending = {"operation_id": operation_id, "status": "pending", "command": "publish", "what": "publish v-old"}
    await create_doc(client, op_key(operation_id), pending)
    await client.aclose()


def test_reserved_prices_and_high_priorities_are_operator_grants(cloud: Cloud) -> None:
    with httpx.Client(base_url=cloud.endpoint, timeout=30) as client:
        _host(client, cloud, 1)
        _host(client, cloud, 2)
        acme = _tenant(client, cloud, "acme")
        reserved = {**JOB, "price_class": "reserved", "gpus_per_node": 8}
        # Without a reservation, "reserved" is refused (it was billed 2.10 instead of 2.99).
        r = client.post("/v1/workloads", json=reserved, headers={**acme, "Idempotency-Key": "r0"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "no_reservation"), r.text
        # Priority above the default ceiling of 100 needs the operator's grant.
        high = {**JOB, "priority": 500}
        r = client.post("/v1/workloads", json=high, headers={**acme, "Idempotency-Key": "p0"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "priority_not_granted")
        granted = client.put("/v1/tenants/acme/limits", json={"max_priority": 500}, headers=cloud.op)
        assert granted.json()["max_priority"] == 500
        assert client.post("/v1/workloads", json=high, headers={**acme, "Idempotency-Key": "p1"}).status_code == 202
        # The operator reserves 8 H100s in eu-1 for acme: one 8-GPU job runs reserved;
        # a second waits for the reservation instead of running at the reserved price.
        now = datetime.now(UTC)
        grant = {
            "reservation_id": "acme-h100",
            "tenant_id": "acme",
            "sku": "h100-80gb-sxm",
            "region": "eu-1",
            "gpus": 8,
            "starts_at": (now - timedelta(minutes=1)).isoformat(),
            "ends_at": (now + timedelta(days=30)).isoformat(),
        }
        done = settled(client, client.post("/v1/reservations", json=grant, headers=cloud.op), cloud.op)
        assert done["status"] == "done", done
        mine = client.get("/v1/reservations", headers=acme).json()["items"]
        assert [(x["reservation_id"], x["gpus"], x["in_force"]) for x in mine] == [("acme-h100", 8, True)]
        big = client.post("/v1/workloads", json={**reserved, "nodes": 2}, headers={**acme, "Idempotency-Key": "r1"})
        assert (big.status_code, big.json()["error"]["code"]) == (403, "no_reservation")  # 16 > 8 reserved
        first = client.post("/v1/workloads", json=reserved, headers={**acme, "Idempotency-Key": "r2"})
        second = client.post("/v1/workloads", json=reserved, headers={**acme, "Idempotency-Key": "r3"})
        assert first.status_code == second.status_code == 202
        one, two = first.headers["Location"], second.headers["Location"]
        poll("the first reserved job running", 15, lambda: client.get(one, headers=acme).json()["status"] == "running")
        waiting = poll(
            "the second to wait for the reservation",
            15,
            lambda: (d := client.get(two, headers=acme).json()).get("pending_code") == "reservation" and d,
        )
        assert waiting["status"] == "queued"
        assert "hold 8 of 8" in waiting["pending_reason"]
        assert client.post(f"{one}/complete", headers=acme).status_code == 202
        charge = poll("the charge", 20, lambda: client.get(one, headers=acme).json().get("charge"))
        seconds = charge["gpu_seconds"]
        month = datetime.now(UTC).strftime("%Y-%m")
        inv = poll(
            "the invoice",
            20,
            lambda: (i := client.get(f"/v1/invoices/{month}", headers=acme).json()).get("lines") and i,
        )
        classes = {ln["price_class"]: ln["unit_price"] for ln in inv["lines"]}
        assert classes["reserved"] == "2.10"
        assert seconds >= 8 * 60
        poll("the second reserved job running", 15, lambda: client.get(two, headers=acme).json()["status"] == "running")


def test_a_hard_budget_holds_running_work_stops_at_it(redis_url: str) -> None:
    """Issue 10 (11): at its hard budget a tenant's running on-demand training stops too,
    so the month ends at the budget give or take one meter reading of its GPUs (it used
    to run on without bound: 3,382 USD against a 2,500 USD budget in the demo month).
    Simulated time at x120, anchored so every process agrees on it."""
    now = time.time()
    start = datetime.fromtimestamp(now, UTC).isoformat()
    clock = f"accelerated:120@{start}~{now}"
    with local_cloud(redis_url, MINICLOUD_CLOCK=clock) as c, httpx.Client(base_url=c.endpoint, timeout=30) as client:
        _host(client, c)
        key = _tenant(client, c, "thrifty")
        ok = client.put("/v1/accounts/thrifty", json={"credit_limit": "0", "hard_budget": "2.00"}, headers=c.op)
        assert settled(client, ok, c.op)["status"] == "done"
        credit = {"amount": "1000.00", "reference": "prepaid-1"}
        assert settled(client, client.post("/v1/accounts/thrifty/credits", json=credit, headers=c.op), c.op)
        poll("the account unblocked", 10, lambda: client.get("/v1/budget", headers=key).json()["state"] == "ok")
        job = {**JOB, "gpus_per_node": 8, "kind": "training"}
        where = client.post("/v1/workloads", json=job, headers={**key, "Idempotency-Key": "t1"}).headers["Location"]
        # 8 x 2.99 USD/GPU-hour: 2.00 USD after ~5 simulated minutes (2.5 s here).
        ended = poll(
            "the training stopped by the budget",
            30,
            lambda: (d := client.get(where, headers=key).json())["status"] == "ended" and d,
        )
        assert "budget" in ended["reason"], ended
        charge = poll("its charge", 20, lambda: client.get(where, headers=key).json().get("charge"))
        assert charge["minimum_gpu_seconds"] == 0  # the cloud ended it: no minimum
        month = datetime.fromisoformat(ended["ended_at"]).strftime("%Y-%m")
        # Alone on its invoice, the job's charge is the invoice's total (one rounding rule):
        # wait for the draft that includes all of it.
        inv = poll(
            "the invoice with the whole charge",
            20,
            lambda: (
                (i := client.get(f"/v1/invoices/{month}", headers=key).json()).get("total") == charge["amount"] and i
            ),
        )
        # The work ends when the charges reached the budget: the month ends at it, give
        # or take the rounding of a line (a cent each way).
        assert Decimal("1.98") <= Decimal(inv["total"]) <= Decimal("2.02"), inv["total"]
        assert client.get("/v1/budget", headers=key).json()["state"] == "blocked"
