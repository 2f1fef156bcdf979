"""``minicloud``: the cloud's command line, over the public API.

Configured by ``MINICLOUD_ENDPOINT`` (default http://localhost:8080) and
``MINICLOUD_API_KEY``, or by ``~/.config/minicloud/config.json`` ({"endpoint", "api_key"});
the environment wins. Tables for people, ``--json`` for scripts. Exit codes: 0 done,
1 the API refused (the error's code and message on one line), 2 bad usage,
3 the endpoint cannot be reached, 4 ``wait`` timed out.

This first slice covers prices, quotes, tenants, keys and workloads (the gateway's
first endpoints).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help="minicloud: GPUs by the second.")
tenants = typer.Typer(no_args_is_help=True, help="Tenants (operator).")
keys = typer.Typer(no_args_is_help=True, help="API keys (operator).")
workloads = typer.Typer(no_args_is_help=True, help="Workloads: submit, list, get, wait, complete, cancel.")
app.add_typer(tenants, name="tenants")
app.add_typer(keys, name="keys")
app.add_typer(workloads, name="workloads")
out = Console()
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


class Failed(Exception):
    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code, self.line = code, line


def _config() -> tuple[str, str | None]:
    path = Path(os.environ.get("MINICLOUD_CONFIG", Path.home() / ".config" / "minicloud" / "config.json"))
    conf: dict[str, Any] = {}
    if path.exists():
        try:
            conf = json.loads(path.read_text())
        except ValueError as exc:
            raise Failed(2, f"minicloud: {path} is not valid JSON: {exc}") from exc
    endpoint = os.environ.get("MINICLOUD_ENDPOINT") or conf.get("endpoint") or "http://localhost:8080"
    key = os.environ.get("MINICLOUD_API_KEY") or conf.get("api_key")
    return str(endpoint).rstrip("/"), key


def call(
    method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None, auth: bool = True
) -> Any:
    endpoint, key = _config()
    if key is None and auth:
        raise Failed(2, "minicloud: no API key: set MINICLOUD_API_KEY (or api_key in the config file)")
    try:
        r = httpx.request(
            method,
            endpoint + path,
            json=body,
            headers={**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise Failed(3, f"minicloud: cannot reach {endpoint}: {exc}") from exc
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            raise Failed(1, f"minicloud: {err['code']}: {err['message']}")
        except (ValueError, KeyError, TypeError):
            raise Failed(1, f"minicloud: HTTP {r.status_code}: {r.text[:200]}") from None
    return r.json() if r.content else None


def _emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json or table is None:
        print(json.dumps(data, indent=2))
    else:
        out.print(table)


@tenants.command("create")
def tenants_create(
    tenant_id: str, name: Annotated[str, typer.Option(help="A name for people")] = "", as_json: JsonOpt = False
) -> None:
    """Create a tenant."""
    _emit(call("POST", "/v1/tenants", {"tenant_id": tenant_id, "name": name or tenant_id}), as_json)


@keys.command("issue")
def keys_issue(tenant_id: str, as_json: JsonOpt = False) -> None:
    """Issue an API key for a tenant (shown once)."""
    data = call("POST", f"/v1/tenants/{tenant_id}/keys")
    if as_json:
        _emit(data, True)
    else:
        out.print(f"key {data['key_id']} for {tenant_id} (shown once, store it now):\n{data['key']}")


@keys.command("revoke")
def keys_revoke(tenant_id: str, key_id: str) -> None:
    """Revoke a tenant's API key (effective at once)."""
    call("DELETE", f"/v1/tenants/{tenant_id}/keys/{key_id}")
    out.print(f"revoked {key_id}")


@app.command("prices")
def prices_cmd(as_json: JsonOpt = False) -> None:
    """The price list in force, per GPU-hour (and announced changes)."""
    data = call("GET", "/v1/prices", auth=False)
    table = Table("SKU", "region", "class", f"{data['currency']}/GPU-hour", title=f"price list {data['version']}")
    for p in data["prices"]:
        table.add_row(p["sku"], p["region"], p["price_class"], p["per_gpu_hour"])
    _emit(data, as_json, table)
    if not as_json:
        for v in data["upcoming"]:
            out.print(f"announced: {v['version']} from {v['effective_at']}")


@app.command("quote")
def quote_cmd(
    sku: str,
    gpus: int,
    hours: float,
    price_class: Annotated[str, typer.Option("--class", help="on_demand, spot or reserved")] = "on_demand",
    region: Annotated[str, typer.Option(help="Region (* for any)")] = "*",
    as_json: JsonOpt = False,
) -> None:
    """The price of GPUs for a duration, starting now."""
    q = call("GET", f"/v1/quote?sku={sku}&gpus={gpus}&hours={hours}&price_class={price_class}&region={region}")
    if as_json:
        _emit(q, True)
        return
    out.print(f"{gpus} x {sku} ({price_class}) for {hours} h: {q['amount']} {q['currency']}")
    for part in q["parts"]:
        out.print(
            f"  {part['gpu_seconds']} GPU-seconds at {part['unit_price']}/GPU-hour (catalog {part['catalog_version']})"
        )


@workloads.command("submit")
def wl_submit(
    name: str,
    gpus_per_node: Annotated[int, typer.Option("--gpus", help="GPUs per node")] = 1,
    nodes: Annotated[int, typer.Option(help="Nodes in the gang")] = 1,
    sku: Annotated[str | None, typer.Option(help="GPU SKU (default: any)")] = None,
    kind: Annotated[str, typer.Option(help="pre_training, fine_tuning, training, inference, dev")] = "training",
    price_class: Annotated[str, typer.Option("--class", help="on_demand, spot or reserved")] = "on_demand",
    region: Annotated[str | None, typer.Option(help="Region (default: any)")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key (default: derived from the name)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a workload; prints its id."""
    body = {
        "name": name,
        "kind": kind,
        "sku": sku,
        "gpus_per_node": gpus_per_node,
        "nodes": nodes,
        "region": region,
        "price_class": price_class,
    }
    data = call("POST", "/v1/workloads", body, {"Idempotency-Key": idempotency_key or f"cli-{name}"})
    if as_json:
        _emit(data, True)
    else:
        out.print(data["workload_id"])


def _row(w: dict[str, Any]) -> list[str]:
    alloc = w.get("allocation") or {}
    why = w.get("pending_reason") or w.get("reason") or ""
    return [
        w["workload_id"],
        w.get("name", ""),
        w["status"],
        str(alloc.get("gpus", "")),
        ",".join(alloc.get("hosts", [])),
        why,
    ]


@workloads.command("list")
def wl_list(as_json: JsonOpt = False) -> None:
    """Your workloads."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = call("GET", "/v1/workloads" + (f"?after={after}" if after else ""))
        items += page["items"]
        after = page["next"]
        if not after:
            break
    table = Table("id", "name", "status", "GPUs", "hosts", "why")
    for w in items:
        table.add_row(*_row(w))
    _emit(items, as_json, table)


@workloads.command("get")
def wl_get(workload_id: str, as_json: JsonOpt = False) -> None:
    """One workload, with its allocation or why it waits."""
    w = call("GET", f"/v1/workloads/{workload_id}")
    table = Table("id", "name", "status", "GPUs", "hosts", "why")
    table.add_row(*_row(w))
    _emit(w, as_json, table)


@workloads.command("wait")
def wl_wait(
    workload_id: str,
    until: Annotated[str, typer.Option(help="running or ended")] = "running",
    timeout: Annotated[float, typer.Option(help="Seconds")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Wait until a workload runs (or ends), showing its progress."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        w = call("GET", f"/v1/workloads/{workload_id}")
        now = f"{w['status']}: {w.get('pending_reason') or ''}".rstrip(": ")
        if now != last and not as_json:
            out.print(now)
            last = now
        if w["status"] == until or w["status"] in ("ended", "rejected"):
            if as_json:
                _emit(w, True)
            if w["status"] != until:
                raise Failed(1, f"minicloud: {workload_id} is {w['status']}: {w.get('reason', '')}")
            return
        if time.monotonic() > deadline:
            raise Failed(4, f"minicloud: {workload_id} is still {w['status']} after {timeout:.0f}s")
        time.sleep(0.5)


@workloads.command("complete")
def wl_complete(workload_id: str) -> None:
    """Say the workload is done: its GPUs are released, the meter stops."""
    call("POST", f"/v1/workloads/{workload_id}/complete")
    out.print(f"completing {workload_id}")


@workloads.command("cancel")
def wl_cancel(workload_id: str) -> None:
    """Stop the workload (queued or running)."""
    call("POST", f"/v1/workloads/{workload_id}/cancel")
    out.print(f"cancelling {workload_id}")


def main() -> None:
    try:
        app()  # usage errors: click prints them and exits with 2
    except Failed as exc:
        print(exc.line, file=sys.stderr)
        raise SystemExit(exc.code) from None


if __name__ == "__main__":
    main()
