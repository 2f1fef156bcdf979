"""The web console (``/console``) against the whole cloud — five service processes and
the local hosts' agents on a real Redis:

- its security as an HTTP client sees it: the session cookie's flags, CSRF on every
  change, the same origin, a revoked key ending its sessions, security headers, no
  page that loads scripts from the internet, and a tenant seeing only its own data;
- the operator's new reads (queue, revenue, dead letters, capacity over time);
- and the issue's walk in a real browser (Debian's chromium): the operator signs in,
  registers a host, creates tenants and a key; the tenant signs in, submits a job,
  watches it run and finish, and opens its invoice line; another tenant cannot see it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from minicloud_shared.contracts.topology import SCHEDULING_COMMANDS
from tests.support.browser import chromium, screenshot, wait_for
from tests.support.cloud import LOCAL_HOSTS, Cloud, host_body, local_cloud, poll, settled

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def cloud(redis_url: str) -> Iterator[Cloud]:
    with local_cloud(redis_url, MINICLOUD_CAPACITY_SAMPLE_S="0.5") as c:
        yield c


def _tenant(client: httpx.Client, cloud: Cloud, tenant: str) -> str:
    assert (
        client.post("/v1/tenants", json={"tenant_id": tenant, "name": tenant.title()}, headers=cloud.op).status_code
        == 201
    )
    credit = client.post(
        f"/v1/accounts/{tenant}/credits",
        json={"amount": "500", "reference": "welcome"},
        headers={**cloud.op, "Idempotency-Key": f"credit-{tenant}"},
    )
    assert settled(client, credit, cloud.op)["status"] == "done"
    key: str = client.post(f"/v1/tenants/{tenant}/keys", headers=cloud.op).json()["key"]
    return key


def _sign_in(endpoint: str, key: str) -> tuple[httpx.Client, str, httpx.Response]:
    """A client holding a console session (the cookie), its CSRF token, and the answer."""
    client = httpx.Client(base_url=endpoint, timeout=10)
    answer = client.post("/console/session", json={"key": key})
    assert answer.status_code == 200, answer.text
    return client, answer.json()["csrf_token"], answer


def test_console_sessions_are_safe_and_scoped(cloud: Cloud) -> None:
    api = httpx.Client(base_url=cloud.endpoint, timeout=10)

    # The page and its headers: its own scripts only, never framed; nothing from a CDN.
    page = api.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "http" not in page.text.replace("http-equiv", "")  # no asset from anywhere else
    assert "http" not in api.get("/console/console.css").text
    assert api.get("/console/secrets.txt").status_code == 404
    assert api.get("/docs").status_code == 404  # it loaded Swagger UI from a CDN
    assert api.get("/openapi.json").status_code == 200
    assert api.get("/v1/skus").headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"

    # Signing in: a bad key is refused; a good one gives an HttpOnly, SameSite cookie
    # that holds a session, not the key.
    assert api.post("/console/session", json={"key": "mck_000000000000_" + "x" * 43}).status_code == 401
    assert api.post("/console/session", json={"key": cloud.operator_key, "extra": 1}).status_code == 422
    op, op_csrf, answer = _sign_in(cloud.endpoint, cloud.operator_key)
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/" in cookie
    assert "max-age=28800" in cookie
    assert cloud.operator_key not in answer.headers["set-cookie"]
    assert cloud.operator_key not in answer.text
    assert answer.json()["role"] == "operator"
    assert answer.json()["tenant"] is None
    store = redis.Redis.from_url(cloud.redis_url, decode_responses=True)
    sessions = list(store.scan_iter("mc:gateway:session:*"))
    assert len(sessions) == 1
    assert cloud.operator_key not in str(store.get(sessions[0]))
    assert 0 < store.ttl(sessions[0]) <= 8 * 3600

    # The session reads what the operator's key reads; a change needs the CSRF token,
    # and a browser's request from another origin is refused even with it.
    assert op.get("/v1/tenants").status_code == 200
    body = {"tenant_id": "acme", "name": "Acme"}
    refused = op.post("/v1/tenants", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf"
    assert op.post("/v1/tenants", json=body, headers={"X-CSRF-Token": "guess"}).status_code == 403
    evil = {"X-CSRF-Token": op_csrf, "Origin": "http://evil.example"}
    assert op.post("/v1/tenants", json=body, headers=evil).status_code == 403
    assert op.get("/v1/tenants").json()["items"] == []  # nothing was created by the refused ones
    assert op.post("/v1/tenants", json=body, headers={"X-CSRF-Token": op_csrf}).status_code == 201
    assert op.get("/console/session").json()["csrf_token"] == op_csrf  # after a reload

    # A tenant's session is the tenant's key: its own data only, no operator routes.
    acme_key = op.post("/v1/tenants/acme/keys", headers={"X-CSRF-Token": op_csrf}).json()["key"]
    credit = {"amount": "500", "reference": "welcome"}
    answer = op.post(
        "/v1/accounts/acme/credits", json=credit, headers={"X-CSRF-Token": op_csrf, "Idempotency-Key": "c"}
    )
    assert settled(api, answer, cloud.op)["status"] == "done"
    rival_key = _tenant(api, cloud, "rival")
    registered = api.post("/v1/hosts", json=host_body(1), headers={**cloud.op, "Idempotency-Key": "h1"})
    assert settled(api, registered, cloud.op)["status"] == "done"
    acme, acme_csrf, _ = _sign_in(cloud.endpoint, acme_key)
    rival, _, _ = _sign_in(cloud.endpoint, rival_key)
    assert acme.get("/v1/tenants").status_code == 403
    assert acme.get("/v1/queue").status_code == 403
    job = {"name": "waits", "kind": "training", "sku": "h100-80gb-sxm", "gpus_per_node": 8}
    for n in (1, 2):  # the second waits for the first's GPUs
        submitted = acme.post("/v1/workloads", json=job, headers={"X-CSRF-Token": acme_csrf, "Idempotency-Key": f"{n}"})
        assert submitted.status_code == 202, submitted.text
        wid = submitted.json()["workload_id"]
    assert acme.get(f"/v1/workloads/{wid}").status_code == 200
    assert rival.get(f"/v1/workloads/{wid}").status_code == 404
    assert rival.get("/v1/workloads").json()["items"] == []

    # The operator's queue shows it waiting (no hosts), with why.
    def queued() -> dict[str, Any] | None:
        items = op.get("/v1/queue").json()["items"]
        return next((i for i in items if i["workload_id"] == wid and i["status"] == "queued"), None)

    row = poll("the workload in the operator's queue", 15, queued)
    assert row["tenant"] == "acme"
    assert row["pending_reason"]
    assert row["waiting_s"] >= 0

    # Revoking the key ends its sessions at once; signing out ends a session.
    acme_key_id = acme.get("/console/session").json()["key_id"]
    assert op.delete(f"/v1/tenants/acme/keys/{acme_key_id}", headers={"X-CSRF-Token": op_csrf}).status_code == 204
    assert acme.get("/v1/workloads").status_code == 401
    assert op.delete("/console/session").status_code == 403  # a sign-out is a change too
    assert op.delete("/console/session", headers={"X-CSRF-Token": op_csrf}).status_code == 204
    assert op.get("/v1/tenants").status_code == 401
    assert len(list(store.scan_iter("mc:gateway:session:*"))) == 2  # acme's and rival's are left


def test_operator_views_of_queue_revenue_dead_letters_and_capacity(cloud: Cloud) -> None:
    api = httpx.Client(base_url=cloud.endpoint, timeout=10)
    for i in (1, 2):
        registered = api.post("/v1/hosts", json=host_body(i), headers={**cloud.op, "Idempotency-Key": f"h{i}"})
        assert settled(api, registered, cloud.op)["status"] == "done"
    key = _tenant(api, cloud, "acme")
    tenant = {"Authorization": f"Bearer {key}"}

    # A placed workload and its charge, in the month's revenue.
    job = {"name": "paid", "kind": "training", "sku": "h100-80gb-sxm", "gpus_per_node": 8}
    wid = api.post("/v1/workloads", json=job, headers={**tenant, "Idempotency-Key": "paid"}).json()["workload_id"]
    poll("placement", 20, lambda: api.get(f"/v1/workloads/{wid}", headers=tenant).json()["status"] == "running")
    assert poll("the queue empty", 10, lambda: api.get("/v1/queue", headers=cloud.op).json()["total"] == 0)
    time.sleep(1.5)  # bounded: a second and a half of usage to bill
    assert api.post(f"/v1/workloads/{wid}/complete", headers=tenant).status_code == 202
    poll("the charge", 30, lambda: api.get(f"/v1/workloads/{wid}", headers=tenant).json().get("charge"))

    def billed() -> dict[str, Any] | None:
        doc: dict[str, Any] = api.get("/v1/revenue", headers=cloud.op).json()
        return doc if doc["items"] else None

    revenue = poll("revenue", 30, billed)
    invoice = api.get("/v1/invoices", headers=tenant).json()["items"][0]
    assert revenue["tenants"] == 1
    assert revenue["total"] == invoice["total"]
    usage = [r for r in revenue["items"] if r["kind"] in ("usage", "minimum")]
    assert usage
    assert {r["sku"] for r in usage} == {"h100-80gb-sxm"}
    assert all(r["catalog_version"] for r in usage)
    assert api.get("/v1/revenue?month=2001-01", headers=cloud.op).json()["items"] == []
    assert api.get("/v1/revenue?month=2001-13", headers=cloud.op).status_code == 422
    assert api.get("/v1/revenue", headers=tenant).status_code == 403

    # A poison command is dead-lettered by scheduling and shows with its kind.
    store = redis.Redis.from_url(cloud.redis_url, decode_responses=True)
    store.xadd(SCHEDULING_COMMANDS, {"garbage": "yes", "id": str(uuid.uuid4())})

    def dead() -> dict[str, Any] | None:
        doc: dict[str, Any] = api.get("/v1/dead-letters", headers=cloud.op).json()
        return doc if doc["total"] >= 1 else None

    letters = poll("the dead letter", 20, dead)
    row = next(i for i in letters["items"] if i["count"])
    assert row["stream"] == SCHEDULING_COMMANDS
    assert row["group"] == "scheduling"
    assert row["latest"][0]["kind"] == "poison"
    assert row["latest"][0]["reason"]
    assert len(letters["items"]) >= 10  # every consumer group is listed, empty ones too

    # Capacity over time: a sample every 0.5 s here, agreeing with the capacity now.
    def sampled() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = api.get("/v1/capacity/history?limit=50", headers=cloud.op).json()["items"]
        return items if len(items) >= 3 and items[-1]["total"] == 16 else None

    samples = sampled() or poll("three capacity samples", 15, sampled)
    stamps = [s["at"] for s in samples]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    assert samples[-1]["skus"] == {"h100-80gb-sxm": {"total": 16, "allocated": samples[-1]["allocated"]}}
    assert any(s["allocated"] == 8 for s in samples) or samples[-1]["allocated"] == 0
    assert api.get("/v1/capacity/history", headers=tenant).status_code == 403


# --- in a real browser ------------------------------------------------------------------------


@pytest.fixture
def stack(redis_url: str) -> Iterator[Cloud]:
    with local_cloud(redis_url, agents=LOCAL_HOSTS, MINICLOUD_CAPACITY_SAMPLE_S="1") as c:
        yield c


def _sign_in_page(driver: Any, endpoint: str, key: str) -> None:
    driver.get(endpoint + "/console/")
    field = wait_for(driver, "the sign-in form", lambda d: d.find_element("id", "key"))
    field.send_keys(key)
    driver.find_element("css selector", "form button").click()
    wait_for(driver, "signed in", lambda d: d.find_element("id", "sign-out"))


def _text(driver: Any) -> str:
    text: str = driver.find_element("tag name", "main").text
    return text


def _fill(driver: Any, values: dict[str, str]) -> None:
    from selenium.webdriver.support.ui import Select

    for name, value in values.items():
        el = driver.find_element("id", name)
        if el.tag_name == "select":
            Select(el).select_by_value(value)
        else:
            el.clear()
            el.send_keys(value)


def test_the_console_in_a_browser_operator_then_tenant(stack: Cloud) -> None:
    cloud = stack
    api = httpx.Client(base_url=cloud.endpoint, timeout=10)
    hosts = poll("the agents' hosts", 30, lambda: len(api.get("/v1/hosts", headers=cloud.op).json()["items"]) == 3)
    assert hosts
    with chromium() as browser:
        # The operator: the fleet, a host registered, tenants created, a key issued.
        _sign_in_page(browser, cloud.endpoint, cloud.operator_key)
        wait_for(
            browser, "the fleet with the agents' hosts", lambda d: "local-h2" in _text(d) and "Region eu-1" in _text(d)
        )
        assert browser.get_cookie("mc_session")["httpOnly"] is True
        assert browser.execute_script("return document.cookie") == ""  # the session is not readable by script
        _fill(browser, {"host_id": "console-a1", "rack": "eu-1a-r03", "sku": "a100-80gb-sxm", "gpu_count": "4"})
        browser.find_elements("css selector", "form button")[-1].click()
        wait_for(
            browser,
            "the registered host",
            lambda d: "console-a1" in _text(d) and "registered" in d.find_element("id", "flash").text,
        )
        assert "a100-80gb-sxm" in _text(browser)
        screenshot(browser, "console-fleet")

        browser.get(cloud.endpoint + "/console/#/capacity")
        wait_for(browser, "the capacity chart", lambda d: d.find_element("css selector", "svg.chart rect"))
        screenshot(browser, "console-capacity")

        for tenant in ("acme", "rival"):
            browser.get(cloud.endpoint + "/console/#/tenants")
            wait_for(browser, "the tenants page", lambda d: d.find_element("id", "tenant_id"))
            _fill(browser, {"tenant_id": tenant, "name": tenant.title() + " Corp"})
            browser.find_element("css selector", "form button").click()
            wait_for(browser, f"tenant {tenant}", lambda d, t=tenant: f"Tenant {t}" in _text(d))
            _fill(browser, {"amount": "500"})
            browser.find_element("css selector", "form button").click()
            wait_for(browser, "the credit", lambda d: "credited 500" in d.find_element("id", "flash").text)
            wait_for(browser, "the account's credit", lambda d: "Credits 500" in d.find_element("id", "account").text)
            browser.find_element("id", "issue-key").click()
            key = wait_for(browser, "the new key", lambda d: d.find_element("id", "new-key").text)
            assert key.startswith("mck_")
            wait_for(browser, "the key listed", lambda d, k=key: k.split("_")[1] in d.find_element("id", "keys").text)
            if tenant == "acme":
                acme_key = key
                screenshot(browser, "console-tenant")
            else:
                rival_key = key
        browser.find_element("id", "sign-out").click()
        wait_for(browser, "signed out", lambda d: d.find_element("id", "key"))
        assert browser.get_cookie("mc_session") is None

        # The tenant: submits a job that runs on an agent's host, watches it, opens the line.
        _sign_in_page(browser, cloud.endpoint, acme_key)
        wait_for(browser, "the tenant's workloads", lambda d: "No workloads yet." in _text(d))
        browser.get(cloud.endpoint + "/console/#/submit")
        wait_for(browser, "the submit form", lambda d: d.find_element("id", "command"))
        _fill(
            browser,
            {
                "name": "console-job",
                "sku": "h100-80gb-sxm, h200-141gb-sxm",  # either: the local stack has H100s
                "gpus_per_node": "1",
                "command": "echo hello from the console; sleep 5; echo done",
            },
        )
        browser.find_element("css selector", "form button").click()
        wait_for(browser, "the job running", lambda d: d.find_element("id", "status").text == "running", within_s=30)
        wid = browser.current_url.rsplit("/", 1)[1]
        assert browser.find_element("id", "models").text == "h100-80gb-sxm or h200-141gb-sxm"
        wait_for(browser, "its log", lambda d: "hello from the console" in d.find_element("id", "logs").text)
        screenshot(browser, "console-workload")
        wait_for(browser, "the job ended", lambda d: d.find_element("id", "status").text == "ended", within_s=30)
        assert browser.find_element("id", "outcome").text == "completed"
        wait_for(browser, "its charge", lambda d: "USD" in d.find_element("id", "charged").text, within_s=30)
        line_link = wait_for(
            browser,
            "its invoice line",
            lambda d: d.find_element("css selector", "a[href*='/lines/']"),
            within_s=30,
        )
        line_link.click()
        computation = wait_for(browser, "the line explained", lambda d: d.find_element("id", "computation").text)
        assert "GPU-hours x" in computation
        assert "USD/GPU-hour" in computation
        assert "console-job" in _text(browser)  # the allocation behind the line names the workload
        screenshot(browser, "console-invoice-line")
        browser.get(cloud.endpoint + "/console/#/workloads")
        wait_for(browser, "the list", lambda d: "console-job" in _text(d))
        screenshot(browser, "console-workloads")

    # Another tenant, in another browser, sees none of it.
    with chromium() as other:
        _sign_in_page(other, cloud.endpoint, rival_key)
        wait_for(other, "rival's empty list", lambda d: "No workloads yet." in _text(d))
        other.get(cloud.endpoint + f"/console/#/workloads/{wid}")
        wait_for(other, "not found", lambda d: "Not found" in _text(d))
        assert "console-job" not in _text(other)
        other.get(cloud.endpoint + "/console/#/invoices")
        wait_for(other, "rival's invoices", lambda d: "No invoices yet" in _text(d))
    rival = {"Authorization": f"Bearer {rival_key}"}
    assert api.get(f"/v1/workloads/{wid}", headers=rival).status_code == 404
