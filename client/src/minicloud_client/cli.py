"""``minicloud``: the cloud's command line, over the public API (through ``minicloud_client``).

Configured by ``MINICLOUD_ENDPOINT`` (default http://localhost:8080) and
``MINICLOUD_API_KEY``, or by ``~/.config/minicloud/config.json`` ({"endpoint", "api_key"});
the environment wins. Tables for people, ``--json`` for scripts. Exit codes: 0 done,
1 the API refused (the error's code and message on one line), 2 bad usage,
3 the endpoint cannot be reached, 4 ``wait`` timed out.

Operators: ``hosts``, ``capacity``, ``tenants``, ``keys``, ``accounts``, ``prices
publish``. Tenants: ``prices``, ``availability``, ``quote``, ``workloads``, ``usage``,
``invoices``, ``budget``. An operator's command waits until its owner accepted it (or
prints the owner's reason for refusing it, exit code 1); ``--no-wait`` returns at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from minicloud_client import api
from minicloud_client.transport import ApiError, Client, Reply, Request, Unreachable

app = typer.Typer(no_args_is_help=True, add_completion=False, help="minicloud: GPUs by the second.")
tenants = typer.Typer(no_args_is_help=True, help="Tenants (operator).")
keys = typer.Typer(no_args_is_help=True, help="API keys (operator).")
workloads = typer.Typer(no_args_is_help=True, help="Workloads: submit, list, get, trace, wait, complete, cancel.")
hosts = typer.Typer(no_args_is_help=True, help="Hosts (operator): register, list, drain, faults, decommission.")
accounts = typer.Typer(no_args_is_help=True, help="Accounts (operator): credit, budgets, commitments.")
invoices = typer.Typer(no_args_is_help=True, help="Your invoices: list, show (with the reasons for a line).")
reservations = typer.Typer(no_args_is_help=True, help="Reserved capacity: grant (operator), list.")
prices = typer.Typer(
    help="Prices: the list in force (public); versions; publish (operator).", invoke_without_command=True
)
app.add_typer(tenants, name="tenants")
app.add_typer(keys, name="keys")
app.add_typer(workloads, name="workloads")
app.add_typer(hosts, name="hosts")
app.add_typer(accounts, name="accounts")
app.add_typer(invoices, name="invoices")
app.add_typer(prices, name="prices")
app.add_typer(reservations, name="reservations")
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


def call(req: Request) -> Any:
    """One API call through the client: 429 and 503 waited out (and said so on stderr),
    a refusal is exit code 1 with the API's code and message, no answer exit code 3."""
    endpoint, key = _config()
    if key is None and req.auth:
        raise Failed(2, "minicloud: no API key: set MINICLOUD_API_KEY (or api_key in the config file)")

    def say(_: Request, reply: Reply, pause: float) -> None:
        code, message = reply.error or (str(reply.status), "")
        print(f"minicloud: {code}: {message}; retrying in {pause:.0f} s", file=sys.stderr)

    with Client(endpoint, key, on_retry=say) as client:
        try:
            return client.call(req)
        except Unreachable as exc:
            raise Failed(3, f"minicloud: {exc}") from exc
        except ApiError as exc:
            raise Failed(1, f"minicloud: {exc.code}: {exc.message}") from None


def pages(page_of: Any) -> list[dict[str, Any]]:
    """Every item of a paged list: ``page_of(after)`` is the request of the page after
    ``after`` (``next`` of the one before)."""
    items: list[dict[str, Any]] = []
    after = None
    while True:
        page = call(page_of(after))
        items += page["items"]
        after = page["next"]
        if not after:
            return items


def _safe(value: str) -> str:
    """Text from the API as a terminal shows it: control characters (escapes) made visible.
    The API refuses them in what it stores; this guards what older records may hold."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


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
    data = call(api.create_tenant(tenant_id, name or tenant_id))
    if as_json:
        _emit(data, True)
    else:
        out.print(f"created tenant {data['tenant_id']} ({data['name']})")


@keys.command("issue")
def keys_issue(
    tenant_id: str,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print the key alone (for scripts).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Issue an API key for a tenant (shown once)."""
    data = call(api.issue_key(tenant_id))
    if quiet:
        print(data["key"])
    elif as_json:
        _emit(data, True)
    else:
        out.print(f"key {data['key_id']} for {tenant_id} (shown once, store it now):\n{data['key']}")


@keys.command("revoke")
def keys_revoke(tenant_id: str, key_id: str) -> None:
    """Revoke a tenant's API key (effective at once)."""
    call(api.revoke_key(tenant_id, key_id))
    out.print(f"revoked {key_id}")


@prices.callback()
def prices_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The price list in force, per GPU-hour (and announced changes)."""
    if ctx.invoked_subcommand is not None:
        return
    data = call(api.prices())
    table = Table(
        "SKU",
        "region",
        "class",
        f"{data['currency']}/GPU-hour (cpu: vCPU-hour, memory: GiB-hour)",
        title=f"price list {data['version']}",
    )
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
    q = call(api.quote(sku, gpus, hours, price_class, region))
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
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus", help="Whole GPUs per node (default 1; 0 with --cpus: CPU-only work)")
    ] = None,
    nodes: Annotated[int, typer.Option(help="Nodes in the gang")] = 1,
    gpu_milli: Annotated[
        int | None,
        typer.Option("--gpu-milli", help="A time-sliced share of one GPU, in thousandths (250: a quarter)"),
    ] = None,
    mig: Annotated[
        str | None, typer.Option(help="A MIG slice of one GPU, by profile (e.g. 1g.10gb on an H100)")
    ] = None,
    cpus: Annotated[float | None, typer.Option(help="vCPUs per node (default: the GPUs' part of the host's)")] = None,
    memory_gib: Annotated[
        float | None, typer.Option("--memory-gib", help="Memory per node, GiB (default: the GPUs' part)")
    ] = None,
    sku: Annotated[
        str | None, typer.Option(help="GPU SKU, or several separated by commas: any of them (default: any)")
    ] = None,
    kind: Annotated[str, typer.Option(help="pre_training, fine_tuning, training, inference, dev")] = "training",
    price_class: Annotated[str, typer.Option("--class", help="on_demand, spot or reserved")] = "on_demand",
    region: Annotated[str | None, typer.Option(help="Region (default: any)")] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Names this submission: the same key again is a retry of it (default: a new one each time)"),
    ] = None,
    image: Annotated[str | None, typer.Option(help="Container image to run (with a command after --)")] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="NAME=value for the program (repeatable)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port an inference service listens on")] = None,
    max_duration_s: Annotated[int, typer.Option("--max-duration", help="Stopped after this many seconds")] = 86_400,
    command: Annotated[list[str] | None, typer.Argument(help="-- the command and its arguments")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a workload; prints its id. With --image and a command after -- its hosts
    run it: minicloud workloads submit NAME --image IMG --gpus 8 --nodes 2 -- python train.py.
    A quarter of a GPU: --gpu-milli 250. A MIG slice: --mig 1g.10gb. CPU-only work:
    --gpus 0 --cpus 4 --memory-gib 16."""
    # A fresh key per invocation: running the command twice submits twice. The call's
    # own retries (503, 429, a lost connection) reuse it, so they submit once.
    key = idempotency_key or f"cli-{uuid.uuid4()}"
    variables: dict[str, str] = {}
    for item in env or []:
        var, eq, value = item.partition("=")
        if not eq or not var:
            raise Failed(2, f"minicloud: --env takes NAME=value, not {item!r}")
        variables[var] = value
    several = [s.strip() for s in sku.split(",") if s.strip()] if sku and "," in sku else None
    if gpus_per_node is None:
        gpus_per_node = 0 if gpu_milli or mig else 1
    request = api.submit_workload(
        name=name,
        kind=kind,
        sku=None if several else sku,
        skus=several,
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        region=region,
        price_class=price_class,
        max_duration_s=max_duration_s,
        idempotency_key=key,
        image=image,
        command=command or None,
        env=variables or None,
        port=port,
        gpu_milli=gpu_milli,
        mig_profile=mig,
        cpu_milli=None if cpus is None else round(cpus * 1000),
        memory_mib=None if memory_gib is None else round(memory_gib * 1024),
    )
    data = call(request)
    if as_json:
        _emit(data, True)
    else:
        out.print(data["workload_id"])


def _row(w: dict[str, Any]) -> list[str]:
    alloc = w.get("allocation") or {}
    why = w.get("pending_reason") or w.get("reason") or ""
    return [
        w["workload_id"],
        _safe(w.get("name", "")),
        w["status"],
        str(alloc.get("gpus", "")),
        ",".join(alloc.get("hosts", [])),
        _safe(why),
    ]


@workloads.command("list")
def wl_list(as_json: JsonOpt = False) -> None:
    """Your workloads."""
    items = pages(lambda after: api.workloads(after=after))
    table = Table("id", "name", "status", "GPUs", "hosts", "why")
    for w in items:
        table.add_row(*_row(w))
    _emit(items, as_json, table)


@workloads.command("get")
def wl_get(workload_id: str, as_json: JsonOpt = False) -> None:
    """One workload, with its allocation or why it waits."""
    w = call(api.workload(workload_id))
    table = Table("id", "name", "status", "GPUs", "hosts", "why")
    table.add_row(*_row(w))
    _emit(w, as_json, table)
    if not as_json:
        if w.get("image"):
            out.print(f"runs: {_safe(w['image'])}: {_safe(' '.join(w.get('command') or []))}", markup=False)
        if w.get("endpoint"):
            out.print(f"endpoint: {w['endpoint']['url']} (on {w['endpoint']['host_id']})", markup=False)
        if w.get("exit_code") is not None:
            on = f" on {w['failed_host']}" if w.get("failed_host") else ""
            out.print(f"exit code: {w['exit_code']}{on}", markup=False)


@workloads.command("trace")
def wl_trace(workload_id: str, as_json: JsonOpt = False) -> None:
    """From the request that submitted a workload to its invoice line: every fact the
    services published about it, with the request id they all carry."""
    t = call(api.workload_trace(workload_id))
    table = Table("at", "by", "event", "status", "allocation", "caused by")
    for s in t["steps"]:
        event = s["type"].rsplit(".", 1)[-1]
        cause = (s.get("causation_id") or "")[:13]
        table.add_row(s["at"], s["producer"], event, s["status"], s.get("allocation_id") or "", _safe(cause))
    _emit(t, as_json, table)
    if not as_json:
        out.print(f"request id (X-Request-Id): {_safe(t.get('correlation_id') or 'unknown')}", markup=False)
        for line in t["invoice_lines"]:
            out.print(
                f"invoice {line['month']}: {_safe(line['description'])}: {line['gpu_seconds']} GPU-seconds "
                f"(minicloud invoices show {line['month']})",
                markup=False,
            )


def _unit(w: dict[str, Any]) -> str:
    """What a workload's charged quantity counts (docs/billing.md)."""
    a = w.get("allocation") or {}
    if a.get("mig_profile") or w.get("mig_profile"):
        return "slice-seconds"
    if a.get("gpu_milli") or w.get("gpu_milli"):
        return "thousandth-GPU-seconds"
    if a.get("gpus") == 0 or w.get("gpus_per_node") == 0:
        return "thousandth-vCPU-seconds (with its memory)"
    return "GPU-seconds"


@workloads.command("wait")
def wl_wait(
    workload_id: str,
    until: Annotated[str, typer.Option(help="running, ended, or charged (its bill is rated)")] = "running",
    timeout: Annotated[float, typer.Option(help="Seconds")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Wait until a workload runs (or ends, or is charged), showing its progress."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        w = call(api.workload(workload_id))
        now = f"{w['status']}: {w.get('pending_reason') or ''}".rstrip(": ")
        if w.get("charge"):
            c = w["charge"]
            now = f"charged: {c['amount']} {c['currency']} for {c['gpu_seconds']} {_unit(w)}"
        if now != last and not as_json:
            out.print(now)
            last = now
        reached = bool(w.get("charge")) if until == "charged" else w["status"] == until
        # An ended workload that ran is charged soon: its last usage record is on its way.
        hopeless = w["status"] == "rejected" or (
            w["status"] == "ended" and not (until == "charged" and w.get("allocation"))
        )
        if reached or hopeless:
            if as_json:
                _emit(w, True)
            if not reached:
                raise Failed(1, f"minicloud: {workload_id} is {w['status']}: {w.get('reason', '')}")
            return
        if time.monotonic() > deadline:
            raise Failed(4, f"minicloud: {workload_id} is still {w['status']} after {timeout:.0f}s")
        time.sleep(0.5)


@workloads.command("logs")
def wl_logs(
    workload_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing lines until the workload ends")] = False,
    since: Annotated[str, typer.Option(help="Only lines after this line id")] = "0",
    as_json: JsonOpt = False,
) -> None:
    """A workload's output (every node's stdout and stderr): [rank] line."""
    cursor = since
    while True:
        page = call(api.workload_logs(workload_id, cursor))
        for ln in page["lines"]:
            if as_json:
                print(json.dumps(ln))
            else:
                tag = "!" if ln["stream"] == "stderr" else ("*" if ln["stream"] == "agent" else " ")
                print(f"[{ln['rank']}]{tag} {_safe(ln['line'])}", flush=True)
        cursor = page["next"]
        if not follow or (page["ended"] and not page["lines"]):
            return
        if not page["lines"]:
            time.sleep(1)


@workloads.command("complete")
def wl_complete(workload_id: str) -> None:
    """Say the workload is done: its GPUs are released, the meter stops."""
    call(api.complete_workload(workload_id))
    out.print(f"completing {workload_id}")


@workloads.command("cancel")
def wl_cancel(workload_id: str) -> None:
    """Stop the workload (queued or running)."""
    call(api.cancel_workload(workload_id))
    out.print(f"cancelling {workload_id}")


WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the owner accepted it.")]


def _operation(accepted: dict[str, Any], wait: bool, as_json: bool, timeout_s: float = 30) -> None:
    """Follow an operator's command to its outcome; a refusal or failure is exit code 1."""
    doc = accepted
    deadline = time.monotonic() + timeout_s
    while wait and doc["status"] == "pending":
        if time.monotonic() > deadline:
            raise Failed(4, f"minicloud: {accepted['what']} is still pending after {timeout_s:.0f}s")
        time.sleep(0.2)
        doc = call(api.operation(accepted["operation_id"]))
    if as_json:
        _emit(doc, True)
    if doc["status"] in ("rejected", "failed"):
        raise Failed(1, f"minicloud: {doc['code']}: {doc['message']}")
    if not as_json:
        out.print(f"{doc['status']}: {doc.get('message') or doc['what']}")


@hosts.command("register")
def hosts_register(
    host_id: str,
    sku: Annotated[str, typer.Option(help="GPU SKU (see `minicloud prices`)")],
    region: Annotated[str, typer.Option()],
    zone: Annotated[str, typer.Option()],
    rack: Annotated[str, typer.Option()],
    nvlink_domain: Annotated[str, typer.Option(help="NVLink domain (default: the host alone)")] = "",
    gpus: Annotated[int, typer.Option(help="GPUs on the host")] = 8,
    cpus: Annotated[float | None, typer.Option(help="vCPUs it gives to workloads (default: not declared)")] = None,
    memory_gib: Annotated[float | None, typer.Option("--memory-gib", help="Memory it gives to workloads, GiB")] = None,
    shared: Annotated[bool, typer.Option(help="Its GPUs may also be given as time-sliced shares")] = False,
    mig_layout: Annotated[
        str | None, typer.Option(help="Its GPUs partitioned into these MIG slices, e.g. 3g.40gb,4g.40gb")
    ] = None,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Add a host and its GPUs to the fleet."""
    body: dict[str, Any] = {
        "host_id": host_id,
        "sku": sku,
        "region": region,
        "zone": zone,
        "rack": rack,
        "nvlink_domain": nvlink_domain or f"{host_id}-nvl",
        "gpu_count": gpus,
        "gpu_mode": "mig" if mig_layout else "shared" if shared else "whole",
    }
    if mig_layout:
        body["mig_layout"] = [p.strip() for p in mig_layout.split(",") if p.strip()]
    if cpus is not None:
        body["cpu_milli"] = round(cpus * 1000)
    if memory_gib is not None:
        body["memory_mib"] = round(memory_gib * 1024)
    _operation(call(api.register_host(body)), wait, as_json)


@hosts.command("gpu-mode")
def hosts_gpu_mode(
    host_id: str,
    mode: Annotated[str, typer.Argument(help="whole, shared or mig")],
    layout: Annotated[str | None, typer.Option(help="With mig: the slices of every GPU, e.g. 3g.40gb,4g.40gb")] = None,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Give a host's GPUs whole, also as time-sliced shares, or as MIG slices (refused
    while work runs on it)."""
    if mode not in ("whole", "shared", "mig"):
        raise Failed(2, f"minicloud: the GPU mode is whole, shared or mig, not {mode!r}")
    slices = [p.strip() for p in layout.split(",") if p.strip()] if layout else None
    _host_command(api.set_gpu_mode(host_id, mode, slices), wait, as_json)


@hosts.command("list")
def hosts_list(
    region: Annotated[str | None, typer.Option()] = None,
    sku: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    """The fleet's hosts, with their state and GPUs."""
    items = pages(lambda after: api.hosts(region=region, sku=sku, after=after))
    table = Table("host", "SKU", "region", "rack", "state", "mode", "GPUs", "free", "alloc", "faulted", "vCPU")
    for h in items:
        faulted = ",".join(str(i) for i in h["faulted"])
        cpu = h.get("cpu_milli")
        table.add_row(
            h["host_id"],
            h["sku"],
            h["region"],
            h["rack"],
            h["state"],
            h.get("gpu_mode", "whole"),
            *map(str, (h["gpus"], h["free"], h["allocated"])),
            faulted,
            "" if cpu is None else f"{cpu / 1000:g}",
        )
    _emit(items, as_json, table)


def _host_command(request: Request, wait: bool, as_json: bool) -> None:
    _operation(call(request), wait, as_json)


@hosts.command("drain")
def hosts_drain(
    host_id: str, reason: Annotated[str, typer.Option()] = "", wait: WaitOpt = True, as_json: JsonOpt = False
) -> None:
    """Place no new work on a host; its running work is requeued elsewhere."""
    _host_command(api.drain_host(host_id, reason), wait, as_json)


@hosts.command("undrain")
def hosts_undrain(host_id: str, wait: WaitOpt = True, as_json: JsonOpt = False) -> None:
    """Make a drained host take work again."""
    _host_command(api.undrain_host(host_id), wait, as_json)


@hosts.command("decommission")
def hosts_decommission(host_id: str, wait: WaitOpt = True, as_json: JsonOpt = False) -> None:
    """Remove a host for good (drain it first)."""
    _host_command(api.decommission_host(host_id), wait, as_json)


@hosts.command("fault")
def hosts_fault(
    host_id: str,
    gpu_index: int,
    code: Annotated[str, typer.Option(help="Fault code, e.g. xid-79")] = "xid-79",
    detail: Annotated[str, typer.Option()] = "",
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Take a failed GPU out of service (its work is requeued, the time not charged)."""
    _host_command(api.report_fault(host_id, gpu_index, code, detail), wait, as_json)


@hosts.command("repair")
def hosts_repair(host_id: str, gpu_index: int, wait: WaitOpt = True, as_json: JsonOpt = False) -> None:
    """A faulted GPU is back in service."""
    _host_command(api.clear_fault(host_id, gpu_index), wait, as_json)


@app.command("capacity")
def capacity_cmd(as_json: JsonOpt = False) -> None:
    """GPUs total, free, allocated, faulted and draining per SKU and region (operator)."""
    data = call(api.capacity())
    table = Table("SKU", "region", "hosts", "GPUs", "free", "alloc", "faulted", "draining", "util", "PFLOPS")
    for r in data["items"]:
        nums = (r["hosts"], r["total"], r["free"], r["allocated"], r["faulted"], r["draining"])
        table.add_row(r["sku"], r["region"], *map(str, nums), f"{r['utilization']:.0%}", r["bf16_pflops"])
    f = data["fleet"]
    nums = (f["hosts"], f["total"], f["free"], f["allocated"], f["faulted"], f["draining"])
    table.add_row("fleet", "", *map(str, nums), f"{f['utilization']:.0%}", "")
    _emit(data, as_json, table)


@app.command("availability")
def availability_cmd(as_json: JsonOpt = False) -> None:
    """GPUs free now per SKU and region (public)."""
    data = call(api.availability())
    table = Table("SKU", "region", "free GPUs", "most free on one host")
    for r in data["items"]:
        table.add_row(r["sku"], r["region"], str(r["free_gpus"]), str(r["max_free_on_one_host"]))
    _emit(data, as_json, table)


@prices.command("versions")
def prices_versions(as_json: JsonOpt = False) -> None:
    """Every price catalog version, oldest first."""
    data = call(api.price_versions())
    table = Table("version", "effective at", "currency")
    for v in data["items"]:
        table.add_row(v["version"], v["effective_at"], v["currency"])
    _emit(data, as_json, table)


@prices.command("publish")
def prices_publish(
    version: str,
    effective_at: Annotated[str, typer.Option(help="ISO 8601 instant, in the future")],
    price: Annotated[
        list[str],
        typer.Option(help="SKU:class:per-GPU-hour[:region], repeatable (what changes; the rest carries over)"),
    ],
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Announce a price catalog version (operator)."""
    rows = []
    for p in price:
        parts = p.split(":")
        if len(parts) not in (3, 4):
            raise Failed(2, f"minicloud: --price {p!r}: expected SKU:class:price[:region]")
        rows.append(
            {
                "sku": parts[0],
                "price_class": parts[1],
                "per_gpu_hour": parts[2],
                "region": parts[3] if len(parts) == 4 else "*",
            }
        )
    _operation(call(api.publish_prices(version, effective_at, rows)), wait, as_json)


@tenants.command("list")
def tenants_list(as_json: JsonOpt = False) -> None:
    """Every tenant."""
    data = call(api.tenants())["items"]
    table = Table("tenant", "name", "created", "keys active", "keys issued", "max priority")
    for t in data:
        table.add_row(
            t["tenant_id"],
            _safe(t["name"]),
            t["created_at"] or "",
            str(t["keys_active"]),
            str(t["keys_issued"]),
            str(t["max_priority"]),
        )
    _emit(data, as_json, table)


@tenants.command("limits")
def tenants_limits(
    tenant_id: str,
    max_priority: Annotated[int, typer.Option(help="The highest priority the tenant may ask for (default 100)")],
) -> None:
    """Grant a tenant a priority ceiling (operator)."""
    data = call(api.set_limits(tenant_id, max_priority))
    out.print(f"{tenant_id}: priorities up to {data['max_priority']}")


@reservations.command("grant")
def reservations_grant(
    tenant_id: str,
    reservation_id: str,
    sku: Annotated[str, typer.Option(help="GPU SKU")],
    region: Annotated[str, typer.Option(help="Region")],
    gpus: Annotated[int, typer.Option(help="GPUs reserved")],
    start: Annotated[str, typer.Option(help="Start of the term, ISO 8601 with its offset")],
    end: Annotated[str, typer.Option(help="End of the term, ISO 8601 with its offset")],
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Grant a tenant reserved capacity (operator): its reserved work runs within it."""
    body = {
        "reservation_id": reservation_id,
        "tenant_id": tenant_id,
        "sku": sku,
        "region": region,
        "gpus": gpus,
        "starts_at": start,
        "ends_at": end,
    }
    _operation(call(api.grant_reservation(body)), wait, as_json)


@reservations.command("list")
def reservations_list(as_json: JsonOpt = False) -> None:
    """Reservations: yours, or every tenant's with the operator's key."""
    data = call(api.reservations())["items"]
    table = Table("tenant", "reservation", "GPUs", "SKU", "region", "from", "until", "in force")
    for r in data:
        row = (r["sku"], r["region"], r["starts_at"], r["ends_at"])
        table.add_row(r["tenant"], r["reservation_id"], str(r["gpus"]), *row, "yes" if r["in_force"] else "no")
    _emit(data, as_json, table)


@keys.command("list")
def keys_list(tenant_id: str, as_json: JsonOpt = False) -> None:
    """A tenant's keys: issued, last used, revoked (operator)."""
    data = call(api.keys(tenant_id))["items"]
    table = Table("key", "issued", "last used", "revoked")
    for k in data:
        table.add_row(k["key_id"], k["created_at"] or "", k["last_used_at"] or "-", k["revoked_at"] or "no")
    _emit(data, as_json, table)


def _show_account(a: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _emit(a, True)
        return
    if "credits" not in a:
        out.print(f"{a['tenant']}: {a['state']}, {a['note']}")
        return
    cur = a["currency"]
    out.print(f"{a['tenant']}: {a['state']}" + (f" ({a['cause']})" if a.get("cause") else ""))
    out.print(
        f"  charged {a['charged']} {cur} in all, {a.get('month_charged') or '0'} {cur} in {a.get('month') or '-'}"
    )
    out.print(
        f"  credit {a['credits']} {cur}, credit limit {a['credit_limit']} {cur}, "
        f"available {a['available'] or 'postpaid'}"
    )
    out.print(f"  budgets: soft {a['soft_budget'] or '-'}, hard {a['hard_budget'] or '-'}")
    for e in a.get("alerts", [])[-5:]:
        out.print(f"  {e['at']}  {e['kind']}: {e['message']}")


@accounts.command("show")
def accounts_show(tenant_id: str, as_json: JsonOpt = False) -> None:
    """A tenant's account: credit, budgets, charges, state."""
    _show_account(call(api.account(tenant_id)), as_json)


@accounts.command("set")
def accounts_set(
    tenant_id: str,
    credit_limit: Annotated[str, typer.Option(help="Charges allowed beyond credit")] = "0",
    soft_budget: Annotated[str | None, typer.Option(help="Monthly alert threshold")] = None,
    hard_budget: Annotated[str | None, typer.Option(help="Monthly limit: new work stops")] = None,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Set a tenant's credit limit and monthly budgets."""
    _operation(call(api.set_account(tenant_id, credit_limit, soft_budget, hard_budget)), wait, as_json)


@accounts.command("credit")
def accounts_credit(
    tenant_id: str,
    amount: str,
    reference: Annotated[str, typer.Option(help="Payment or grant reference (credited once)")],
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Add prepaid credit to a tenant's account."""
    _operation(call(api.add_credit(tenant_id, amount, reference)), wait, as_json)


@app.command("budget")
def budget_cmd(as_json: JsonOpt = False) -> None:
    """Your credit, budgets and charges this month, and whether new work is admitted."""
    _show_account(call(api.budget()), as_json)


@app.command("usage")
def usage_cmd(
    from_month: Annotated[str | None, typer.Option("--from", help="First month, YYYY-MM")] = None,
    to_month: Annotated[str | None, typer.Option("--to", help="Last month, YYYY-MM")] = None,
    as_json: JsonOpt = False,
) -> None:
    """GPU-hours and charges per month, SKU, region and price class."""
    data = call(api.usage(from_month, to_month))
    table = Table("month", "status", "SKU", "region", "class", "GPU-hours", "amount")
    for m in data["months"]:
        for i in m["items"]:
            table.add_row(
                m["month"],
                m["status"],
                i["sku"],
                i["region"],
                i["price_class"],
                i["gpu_hours"],
                f"{i['amount']} {m['currency']}",
            )
    _emit(data, as_json, table)


@invoices.command("list")
def invoices_list(as_json: JsonOpt = False) -> None:
    """Your invoices, newest first."""
    data = call(api.invoices())["items"]
    table = Table("invoice", "month", "status", "total")
    for i in data:
        table.add_row(i["invoice_id"], i["month"], i["status"], f"{i['total']} {i['currency']}")
    _emit(data, as_json, table)


@invoices.command("show")
def invoices_show(
    month: Annotated[str, typer.Argument(help="YYYY-MM")],
    explain: Annotated[int | None, typer.Option(help="Explain line N (from 1): the allocations behind it")] = None,
    as_json: JsonOpt = False,
) -> None:
    """An invoice and its lines; ``--explain N`` shows why line N was charged."""
    deadline = time.monotonic() + 10  # a new month's draft appears with billing's next tick
    while True:
        try:
            inv = call(api.invoice(month))
            break
        except Failed as exc:
            if "not_found" not in exc.line or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    if explain is not None:
        if not 1 <= explain <= len(inv["lines"]):
            raise Failed(2, f"minicloud: the invoice has lines 1..{len(inv['lines'])}")
        line_id = inv["lines"][explain - 1]["line_id"]
        why = call(api.explain_line(month, line_id))
        if as_json:
            _emit(why, True)
            return
        out.print(f"{why['description']}: {why['computation']}")
        table = Table("allocation", "workload", "name", "GPU-hours", "usage records")
        for a in why["allocations"]:
            table.add_row(
                a["allocation_id"], a["workload_id"] or "", a["workload_name"] or "", a["gpu_hours"], str(a["records"])
            )
        out.print(table)
        if why["allocation_count"] > len(why["allocations"]):
            out.print(f"... and {why['allocation_count'] - len(why['allocations'])} smaller allocations")
        return
    # Lines of shares, MIG slices or CPU-only work count other units (their
    # descriptions say which): the columns then say hours of each line's unit.
    other = any(":" in (ln.get("sku") or "") or ln.get("sku") in ("cpu", "memory") for ln in inv["lines"])
    unit = "unit" if other else "GPU"
    table = Table(
        "#",
        "line",
        f"{unit}-hours",
        f"{inv['currency']}/{unit}-hour",
        "amount",
        title=f"{inv['invoice_id']} ({inv['status']})",
    )
    for n, ln in enumerate(inv["lines"], 1):
        hours = f"{ln['gpu_seconds'] / 3600:.4f}"
        table.add_row(str(n), ln["description"], hours, ln["unit_price"], ln["amount"])
    table.add_row("", "total", "", "", inv["total"])
    _emit(inv, as_json, table)


def main() -> None:
    try:
        app()  # usage errors: click prints them and exits with 2
    except Failed as exc:
        print(exc.line, file=sys.stderr)
        raise SystemExit(exc.code) from None


if __name__ == "__main__":
    main()
