"""The whole cloud through its public API: the five services as local processes on a
real Redis, driven over HTTP as an operator and as tenants (issue 5: hosts, capacity,
availability, catalog versions, accounts, usage, invoices with explanations, budgets;
RELIABILITY.md S01 generated from the OpenAPI document)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote as q

import httpx
import pytest
import redis

from minicloud_gateway.openapi import document
from tests.support.cloud import Cloud, cents, host_body, local_cloud, poll, settled

pytestmark = [pytest.mark.broker, pytest.mark.slow]
H100_ON_DEMAND = Decimal("2.99")  # the shipped base price list


@pytest.fixture
def cloud(redis_url: str, tmp_path: Path) -> Iterator[Cloud]:
    # INFO: the services log every command and fact they handle, which S06 searches.
    with local_cloud(redis_url, log_dir=tmp_path, MINICLOUD_LOG_LEVEL="INFO") as c:
        yield c


def tenant(client: httpx.Client, cloud: Cloud, tenant_id: str) -> dict[str, str]:
    assert (
        client.post("/v1/tenants", json={"tenant_id": tenant_id, "name": tenant_id}, headers=cloud.op).status_code
        == 201
    )
    r = client.post(f"/v1/tenants/{tenant_id}/keys", headers=cloud.op)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def run_gang(client: httpx.Client, key: dict[str, str], name: str, nodes: int = 2) -> dict[str, Any]:
    """Submit a gang of ``nodes`` x 8 H100s, wait until it runs, complete it, wait until it ended."""
    body = {"name": name, "kind": "pre_training", "sku": "h100-80gb-sxm", "gpus_per_node": 8, "nodes": nodes}
    r = client.post("/v1/workloads", json=body, headers={**key, "Idempotency-Key": name})
    assert r.status_code == 202, r.text
    where = r.headers["Location"]
    poll(f"{name} running", 20, lambda: client.get(where, headers=key).json()["status"] == "running")
    time.sleep(2.5)  # a few seconds of GPU time, so the invoice has a usage line beside the minimum
    assert client.post(f"{where}/complete", headers=key).status_code == 202
    doc: dict[str, Any] = poll(
        f"{name} ended", 20, lambda: (d := client.get(where, headers=key).json())["status"] == "ended" and d
    )
    return doc


def test_an_operator_runs_the_fleet_and_a_tenant_reads_its_bill(cloud: Cloud) -> None:
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        op = cloud.op
        # Hosts: two accepted, a duplicate and an unknown SKU refused with the owner's reason.
        for i in (1, 2):
            assert settled(client, client.post("/v1/hosts", json=host_body(i), headers=op), op)["status"] == "done"
        # The same Idempotency-Key and body: the same operation, answered as it stands;
        # a different body with that key for the same host: refused.
        keyed = {**op, "Idempotency-Key": "register-h03"}
        first = settled(client, client.post("/v1/hosts", json=host_body(3), headers=keyed), op)
        again = client.post("/v1/hosts", json=host_body(3), headers=keyed).json()
        assert (again["operation_id"], again["status"]) == (first["operation_id"], "done")
        reused = client.post("/v1/hosts", json=host_body(3, gpus=4), headers=keyed)
        assert reused.status_code == 409
        assert reused.json()["error"]["code"] == "idempotency_key_reused"
        assert settled(client, client.post("/v1/hosts/h03/decommission", headers=op), op)["status"] == "done"
        dup = settled(client, client.post("/v1/hosts", json=host_body(1), headers=op), op)
        assert (dup["status"], dup["code"]) == ("rejected", "duplicate_host"), dup
        bad = settled(client, client.post("/v1/hosts", json={**host_body(4), "sku": "z9000"}, headers=op), op)
        assert (bad["status"], bad["code"]) == ("rejected", "unknown_sku"), bad

        def fleet() -> dict[str, Any]:
            return dict(client.get("/v1/capacity", headers=op).json()["fleet"])

        poll("16 GPUs in the fleet", 10, lambda: fleet()["total"] == 16)
        assert fleet()["free"] == 16
        assert client.get("/v1/regions").json()["items"] == [
            {"region": "eu-1", "zones": ["eu-1a"], "skus": ["h100-80gb-sxm"]}
        ]
        avail = client.get("/v1/availability").json()["items"]  # public: no key
        assert avail == [{"sku": "h100-80gb-sxm", "region": "eu-1", "free_gpus": 16, "max_free_on_one_host": 8}]

        # A tenant with credit and budgets; its bill, from the allocation's own times.
        acme = tenant(client, cloud, "acme")
        assert (
            settled(client, client.put("/v1/accounts/acme", json={"hard_budget": "5000"}, headers=op), op)["status"]
            == "done"
        )
        credit = {"amount": "1000.00", "reference": "pay-1"}
        assert (
            settled(client, client.post("/v1/accounts/acme/credits", json=credit, headers=op), op)["status"] == "done"
        )
        again = settled(client, client.post("/v1/accounts/acme/credits", json=credit, headers=op), op)
        assert (again["status"], again["code"]) == ("rejected", "duplicate_reference")

        ended = run_gang(client, acme, "gang-1")
        alloc = ended["allocation"]
        assert alloc["gpus"] == 16
        assert sorted(alloc["hosts"]) == ["h01", "h02"]
        poll("GPUs freed", 10, lambda: fleet()["free"] == 16)
        start = datetime.fromisoformat(alloc["started_at"])
        end = datetime.fromisoformat(ended["ended_at"])
        seconds = int(end.timestamp() // 1) - int(start.timestamp() // 1)
        usage, minimum = seconds * 16, max(0, 60 - seconds) * 16
        expected = cents(Decimal(usage) * H100_ON_DEMAND / 3600) + cents(Decimal(minimum) * H100_ON_DEMAND / 3600)
        month = start.strftime("%Y-%m")

        def invoice() -> dict[str, Any] | None:
            r = client.get(f"/v1/invoices/{month}", headers=acme)
            inv: dict[str, Any] = r.json()
            return inv if r.status_code == 200 and Decimal(inv["total"]) == expected else None

        inv = poll(f"the draft invoice to total {expected}", 20, invoice)
        assert inv["status"] == "draft"
        assert inv["currency"] == "USD"
        kinds = {ln["kind"]: ln for ln in inv["lines"]}
        assert kinds["usage"]["gpu_seconds"] == usage
        assert kinds["usage"]["unit_price"] == "2.99"
        if minimum:
            assert kinds["minimum"]["gpu_seconds"] == minimum
        assert client.get("/v1/invoices", headers=acme).json()["items"][0]["month"] == month

        # The line explains itself: the computation, the allocation and the workload behind it.
        line = kinds["usage"]
        why = client.get(f"/v1/invoices/{month}/lines/{q(line['line_id'], safe='')}", headers=acme).json()
        assert why["computation"].endswith(f"= {line['amount']} USD")
        assert [
            (a["allocation_id"], a["workload_id"], a["workload_name"], a["gpu_seconds"]) for a in why["allocations"]
        ] == [(alloc["allocation_id"], ended["workload_id"], "gang-1", usage)]
        assert client.get(f"/v1/invoices/{month}/lines/nope", headers=acme).status_code == 404

        # Usage by month and the budget agree with the invoice.
        use = client.get("/v1/usage", params={"from": month, "to": month}, headers=acme).json()["months"]
        assert [(m["month"], [i["gpu_hours"] for i in m["items"]]) for m in use] == [
            (month, [str((Decimal(usage + minimum) / 3600).quantize(Decimal("0.0001")))])
        ]

        def budget() -> dict[str, Any] | None:
            b: dict[str, Any] = client.get("/v1/budget", headers=acme).json()
            return b if b.get("month_charged") and Decimal(b["month_charged"]) == expected else None

        b = poll("the budget to show the charge", 20, budget)
        assert (b["state"], b["credits"], b["hard_budget"]) == ("ok", "1000.00", "5000")
        assert Decimal(b["available"]) == Decimal("1000.00") - expected

        # Drain, fault, clear, undrain, decommission: each settles and shows in the host.
        def host(h: str) -> dict[str, Any]:
            return dict(client.get(f"/v1/hosts/{h}", headers=op).json())

        assert (
            settled(client, client.post("/v1/hosts/h02/drain", json={"reason": "bios"}, headers=op), op)["status"]
            == "done"
        )
        poll("h02 draining", 10, lambda: host("h02")["state"] == "draining")
        poll("draining GPUs counted", 10, lambda: fleet()["draining"] == 8 and fleet()["free"] == 8)
        fault = {"gpu_index": 3, "code": "xid-79", "detail": "fell off the bus"}
        assert settled(client, client.post("/v1/hosts/h01/faults", json=fault, headers=op), op)["status"] == "done"
        poll("h01 GPU 3 faulted", 10, lambda: host("h01")["faulted"] == [3] and fleet()["free"] == 7)
        avail = client.get("/v1/availability").json()["items"]
        assert avail[0]["free_gpus"] == 7
        assert avail[0]["max_free_on_one_host"] == 7
        assert settled(client, client.delete("/v1/hosts/h01/faults/3", headers=op), op)["status"] == "done"
        assert settled(client, client.post("/v1/hosts/h02/undrain", headers=op), op)["status"] == "done"
        assert settled(client, client.post("/v1/hosts/h02/decommission", headers=op), op)["status"] == "done"
        poll("h02 gone from capacity", 10, lambda: fleet()["total"] == 8 and fleet()["free"] == 8)
        assert client.post("/v1/hosts/h99/drain", json={}, headers=op).json()["error"]["code"] == "not_found"

        # Catalog versions: one for later is announced; one in the past is refused with the reason.
        later = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        cut = {
            "version": "cut-1",
            "effective_at": later.isoformat(),
            "prices": [{"sku": "h100-80gb-sxm", "price_class": "on_demand", "per_gpu_hour": "2.39"}],
        }
        assert settled(client, client.post("/v1/prices/versions", json=cut, headers=op), op)["status"] == "done"
        past = {**cut, "version": "past-1", "effective_at": "2020-01-01T00:00:00Z"}
        refused = settled(client, client.post("/v1/prices/versions", json=past, headers=op), op)
        assert refused["status"] == "rejected"
        assert "not after" in refused["message"]
        poll(
            "cut-1 listed",
            10,
            lambda: [v["version"] for v in client.get("/v1/prices/versions").json()["items"]][-1] == "cut-1",
        )
        upcoming = client.get("/v1/prices").json()["upcoming"]
        assert upcoming[0]["version"] == "cut-1"
        assert {"sku": "h100-80gb-sxm", "region": "*", "price_class": "on_demand", "per_gpu_hour": "2.39"} in upcoming[
            0
        ]["prices"]

        # The operator sees tenants and the account; a tenant cannot use operator routes.
        assert [t["tenant_id"] for t in client.get("/v1/tenants", headers=op).json()["items"]] == ["acme"]
        assert client.get("/v1/accounts/acme", headers=op).json()["credits"] == "1000.00"
        assert client.get("/v1/capacity", headers=acme).status_code == 403

    # S06: after all that, no key's secret is anywhere in Redis or in the services' logs.
    secrets_ = [k.split("_", 2)[2] for k in (cloud.operator_key, acme["Authorization"].removeprefix("Bearer "))]
    logs = cloud.logs()
    assert len(logs) > 1000, "the services logged what they did"
    assert not [s for s in secrets_ if s in logs]
    r = redis.Redis.from_url(cloud.redis_url)
    dump = b"".join(
        k
        + b"".join(str(v).encode() for v in (r.hgetall(k) if r.type(k) == b"hash" else {}).items())
        + (r.get(k) or b"" if r.type(k) == b"string" else b"")
        for k in r.scan_iter(count=1000)
    )
    r.close()
    assert dump, "Redis holds the cloud's state"
    assert not [s for s in secrets_ if s.encode() in dump]


def test_s01_another_tenants_objects_answer_like_missing_ones_on_every_operation(cloud: Cloud) -> None:
    """S01, generated from the OpenAPI document: every operation with a path parameter,
    called by tenant B with tenant A's real ids and with random ids, answers alike (404
    for tenant routes, 403 for operator routes); list routes never show A's objects."""
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        op = cloud.op
        assert settled(client, client.post("/v1/hosts", json=host_body(1), headers=op), op)["status"] == "done"
        assert settled(client, client.post("/v1/hosts", json=host_body(2), headers=op), op)["status"] == "done"
        a, b = tenant(client, cloud, "tenant-a"), tenant(client, cloud, "tenant-b")
        ended = run_gang(client, a, "secret-gang")
        month = ended["allocation"]["started_at"][:7]
        inv = poll("A's invoice", 20, lambda: client.get(f"/v1/invoices/{month}", headers=a).json().get("lines"))
        real = {
            "workload_id": ended["workload_id"],
            "month": month,
            "line_id": inv[0]["line_id"],
            "tenant_id": "tenant-a",
            "key_id": "0123456789ab",
            "host_id": "h01",
            "operation_id": "x",
            "gpu_index": "3",
            "sku": "h100-80gb-sxm",
        }
        secrets_of_a = [ended["workload_id"], ended["allocation"]["allocation_id"], "secret-gang"]
        spec = document()
        checked, cross_2xx = 0, []
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                tags = operation.get("tags", [])
                if "health" in tags or "public" in tags:
                    continue
                params = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
                body: dict[str, Any] | None = {} if method in ("post", "put") else None
                if not params:
                    if method != "get":
                        continue
                    r = _unthrottled(client, "get", path, b)
                    # List routes: B sees none of A's objects.
                    assert not any(s in r.text for s in secrets_of_a), f"GET {path} shows tenant A's objects to B"
                    checked += 1
                    continue
                answers = []
                for ids in (real, {k: ("2026-02" if k == "month" else secrets.token_hex(6)) for k in real}):
                    url = path
                    for p in params:
                        url = url.replace("{" + p + "}", q(str(ids[p]), safe=""))
                    r = _unthrottled(client, method, url, b, body)
                    answers.append((r.status_code, r.json().get("error", {}).get("code") if r.content else None))
                    if 200 <= r.status_code < 300:
                        cross_2xx.append(f"{method.upper()} {url}")
                if "operator" in tags:
                    assert answers == [(403, "forbidden")] * 2, (path, method, answers)
                else:
                    assert answers == [(404, "not_found")] * 2, (path, method, answers)
                checked += 1
        print(f"S01: {checked} operations checked as tenant B, {len(cross_2xx)} cross-tenant 2xx")
        assert cross_2xx == []
        assert checked >= 25, f"only {checked} operations were checked"


def _unthrottled(
    client: httpx.Client, method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None = None
) -> httpx.Response:
    """Send, waiting out the per-key rate limit (429 with Retry-After) as a client
    would: S01 is about what B may see, and it asks faster than a key may."""
    for _ in range(5):
        r = client.request(method, url, headers=headers, json=body)
        if r.status_code != 429:
            return r
        time.sleep(float(r.headers.get("Retry-After", "1")))
    return r


def test_a_workload_that_accepts_h100_or_h200_runs_on_the_free_one_and_is_billed_at_its_price(cloud: Cloud) -> None:
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        op = cloud.op
        for body in (host_body(1), host_body(2, sku="h200-141gb-sxm", domain="nvl1")):
            assert settled(client, client.post("/v1/hosts", json=body, headers=op), op)["status"] == "done"
        key = tenant(client, cloud, "acme")
        busy = {"name": "busy", "kind": "training", "sku": "h100-80gb-sxm", "gpus_per_node": 8}
        first = client.post("/v1/workloads", json=busy, headers={**key, "Idempotency-Key": "busy"})
        poll(
            "the H100s taken",
            20,
            lambda: client.get(first.headers["Location"], headers=key).json()["status"] == "running",
        )

        either = {"name": "either", "kind": "training", "skus": ["h200-141gb-sxm", "h100-80gb-sxm"], "gpus_per_node": 8}
        r = client.post("/v1/workloads", json=either, headers={**key, "Idempotency-Key": "either"})
        assert r.status_code == 202, r.text
        where = r.headers["Location"]
        doc = poll(
            "either running", 20, lambda: (d := client.get(where, headers=key).json())["status"] == "running" and d
        )
        assert doc["skus"] == ["h100-80gb-sxm", "h200-141gb-sxm"]
        assert doc["sku"] is None
        assert doc["allocation"]["sku"] == "h200-141gb-sxm"
        assert client.post(f"{where}/complete", headers=key).status_code == 202
        poll("its charge", 30, lambda: client.get(where, headers=key).json().get("charge"))
        month = datetime.now(UTC).strftime("%Y-%m")

        def h200_line() -> dict[str, Any] | None:
            inv = client.get(f"/v1/invoices/{month}", headers=key)
            lines = inv.json()["lines"] if inv.status_code == 200 else []
            return next((ln for ln in lines if ln["sku"] == "h200-141gb-sxm"), None)

        line = poll("an H200 line on the invoice", 30, h200_line)
        quote = client.get("/v1/quote?sku=h200-141gb-sxm&gpus=1&hours=1&region=eu-1", headers=key).json()
        assert line["unit_price"] == quote["parts"][0]["unit_price"]  # the H200's price, not the H100's

        # What is refused, and why.
        both = client.post(
            "/v1/workloads", json={**either, "sku": "h100-80gb-sxm"}, headers={**key, "Idempotency-Key": "both"}
        )
        assert (both.status_code, both.json()["error"]["code"]) == (422, "bad_sku")
        unknown = {**either, "skus": ["h100-80gb-sxm", "z9000"]}
        r = client.post("/v1/workloads", json=unknown, headers={**key, "Idempotency-Key": "unknown"})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "unknown_sku")
        absent = {**either, "skus": ["a100-80gb-sxm", "l40s-48gb-pcie"]}
        r = client.post("/v1/workloads", json=absent, headers={**key, "Idempotency-Key": "absent"})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "no_such_capacity")
        assert "a100-80gb-sxm or l40s-48gb-pcie" in r.json()["error"]["message"]
        one = {**either, "skus": ["h100-80gb-sxm"]}
        r = client.post("/v1/workloads", json=one, headers={**key, "Idempotency-Key": "one"})
        assert r.status_code == 422  # a set names at least two; one is sku
