"""The API client without a server: what it sends, how it waits out 429 and 503, and
how it reports refusals and silence."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from minicloud_client import ApiError, Client, Reply, Request, Unreachable, api


def serve(*replies: httpx.Response) -> tuple[Client, list[httpx.Request], list[float]]:
    seen: list[httpx.Request] = []
    pauses: list[float] = []
    todo = list(replies)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return todo.pop(0)

    def told(_: Request, __: Reply, pause: float) -> None:
        pauses.append(pause)

    client = Client("http://cloud.test", "mck_key", transport=httpx.MockTransport(handler), on_retry=told)
    return client, seen, pauses


def test_a_submission_sends_its_body_key_and_idempotency_key() -> None:
    client, seen, _ = serve(httpx.Response(202, json={"workload_id": "wl-1", "status": "submitted"}))
    req = api.submit_workload(name="t", kind="training", gpus_per_node=8, nodes=2, idempotency_key="k-1")
    assert client.call(req) == {"workload_id": "wl-1", "status": "submitted"}
    (sent,) = seen
    assert (sent.method, sent.url.path) == ("POST", "/v1/workloads")
    assert sent.headers["Authorization"] == "Bearer mck_key"
    assert sent.headers["Idempotency-Key"] == "k-1"
    body: dict[str, Any] = json.loads(sent.content)
    assert (body["gpus_per_node"], body["nodes"], body["priority"]) == (8, 2, 100)


def test_a_run_is_sent_only_when_given_and_logs_are_read_from_a_position() -> None:
    plain = api.submit_workload(name="t", kind="training", gpus_per_node=1, idempotency_key="k")
    assert plain.body is not None
    assert not {"image", "command", "env", "port", "skus"} & set(plain.body)  # digests as before these existed
    either = api.submit_workload(
        name="t", kind="training", gpus_per_node=8, idempotency_key="k", skus=["h100-80gb-sxm", "h200-141gb-sxm"]
    )
    assert either.body is not None
    assert (either.body["sku"], either.body["skus"]) == (None, ["h100-80gb-sxm", "h200-141gb-sxm"])
    run = api.submit_workload(
        name="t",
        kind="inference",
        gpus_per_node=1,
        idempotency_key="k",
        image="img",
        command=["python", "serve.py", "--lr", "3e-4"],
        env={"A": "1"},
        port=8000,
    )
    assert run.body is not None
    assert {k: run.body[k] for k in ("image", "command", "env", "port")} == {
        "image": "img",
        "command": ["python", "serve.py", "--lr", "3e-4"],
        "env": {"A": "1"},
        "port": 8000,
    }
    client, seen, _ = serve(httpx.Response(200, json={"lines": [], "next": "0", "ended": False}))
    client.call(api.workload_logs("wl-1", since="1700000000000-3"))
    (sent,) = seen
    assert (sent.url.path, sent.url.params["since"]) == ("/v1/workloads/wl-1/logs", "1700000000000-3")


def test_public_requests_send_no_key_and_none_params_are_left_out() -> None:
    client, seen, _ = serve(httpx.Response(200, json={"items": []}), httpx.Response(200, json={"items": []}))
    client.call(api.availability())
    client.call(api.hosts(region="eu-1"))
    assert "Authorization" not in seen[0].headers
    assert dict(seen[1].url.params) == {"region": "eu-1"}


def test_a_query_string_in_the_path_is_kept() -> None:
    client, seen, _ = serve(httpx.Response(200, json={"items": [], "next": None}))
    client.call(Request("GET", "/v1/workloads?limit=200&after=wl-9"))
    assert dict(seen[0].url.params) == {"limit": "200", "after": "wl-9"}


def test_path_segments_are_quoted() -> None:
    client, seen, _ = serve(httpx.Response(200, json={}))
    client.call(api.explain_line("2026-12", "usage|h100|eu-1|on_demand|v1"))
    assert seen[0].url.raw_path == b"/v1/invoices/2026-12/lines/usage%7Ch100%7Ceu-1%7Con_demand%7Cv1"


def test_busy_and_unavailable_are_waited_out_as_the_server_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("minicloud_client.transport.time.sleep", lambda _s: None)
    busy = httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"code": "rate_limited", "message": "m"}})
    away = httpx.Response(503, json={"error": {"code": "unavailable", "message": "m"}})
    client, seen, pauses = serve(busy, away, httpx.Response(200, json={"ok": True}))
    assert client.call(api.budget()) == {"ok": True}
    assert len(seen) == 3
    assert pauses == [3.0, 2.0]  # Retry-After, else 2 s


def test_waiting_is_bounded_then_the_refusal_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("minicloud_client.transport.time.sleep", lambda _s: None)
    away = httpx.Response(
        503, headers={"Retry-After": "30"}, json={"error": {"code": "storage_full", "message": "full"}}
    )
    client, seen, _ = serve(*[away] * 5)
    client.retry_for_s = 60
    with pytest.raises(ApiError) as refused:
        client.call(api.budget())
    assert (refused.value.status, refused.value.code, refused.value.message) == (503, "storage_full", "full")
    assert len(seen) == 3  # 30 s + 30 s waited, then answered


def test_a_refusal_carries_the_apis_code_and_a_silent_endpoint_is_unreachable() -> None:
    client, _, _ = serve(httpx.Response(404, json={"error": {"code": "not_found", "message": "no workload wl-x"}}))
    with pytest.raises(ApiError, match="not_found: no workload wl-x"):
        client.call(api.workload("wl-x"))

    def down(_: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    silent = Client("http://cloud.test", "k", transport=httpx.MockTransport(down))
    with pytest.raises(Unreachable, match=r"cannot reach http://cloud\.test"):
        silent.call(api.budget())
