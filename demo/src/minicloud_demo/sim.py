"""The simulation driver: plays a scenario against a running cloud through its public
API only, in the cloud's (accelerated) time, and records what it sees.

It is the operator (hosts, tenants, keys, accounts, the price cut, faults, drains) and
every tenant (submissions, completions when a job's time is up). Each simulated hour
it samples capacity and every tenant's workloads; at the end of the month it completes
what still runs, waits for the invoices to be final, and returns the record.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from minicloud_client import AsyncClient, Reply, Request, Unreachable
from minicloud_client import api as v1
from minicloud_demo.scenario import HOUR, Scenario
from minicloud_shared.clock import Clock


class DemoError(Exception):
    """The cloud answered in a way the demo cannot go on from (one clear line)."""


@dataclass
class Record:
    """What the run saw: the report is drawn from this alone."""

    start: str
    end: str
    factor: float
    hosts: int
    gpus: dict[str, int]
    price_cut_at: str
    price_cuts: dict[str, int]
    samples: list[dict[str, Any]] = field(default_factory=list)  # capacity per sim hour
    workloads: list[dict[str, Any]] = field(default_factory=list)  # final documents, with tenant
    invoices: list[dict[str, Any]] = field(default_factory=list)  # the month's final invoices
    events: list[dict[str, Any]] = field(default_factory=list)  # faults, drains, price cut, budget
    submitted: int = 0
    api_calls: int = 0
    api_errors: dict[str, int] = field(default_factory=dict)
    real_seconds: float = 0.0
    hard_budgets: dict[str, str] = field(default_factory=dict)  # tenant -> its monthly hard budget, USD


TRIES = 30  # per call, for a gateway that does not answer at all (0.5 s apart)


class Api:
    """The public API through the one client (429 and 503 waited out as the server
    asks); counts requests and errors by code."""

    def __init__(self, client: AsyncClient, record: Record) -> None:
        self.client, self.record = client, record
        client.on_retry = self._retrying

    def _retrying(self, req: Request, reply: Reply, pause: float) -> None:
        self.record.api_calls += 1  # the refused attempt was a call too
        if reply.status == 503:
            print(
                f"demo: {req.method} {req.path} answered 503 (unavailable): retrying in {pause:.0f} s", file=sys.stderr
            )

    async def send(self, req: Request, key: str | None) -> tuple[int, Any]:
        for attempt in range(TRIES):
            try:
                reply = await self.client.send(req, key)
            except Unreachable as exc:
                if attempt == TRIES - 1:
                    raise DemoError(f"the API does not answer: {exc}") from exc
                await asyncio.sleep(0.5)
                continue
            self.record.api_calls += 1
            if reply.error is not None:
                code = reply.error[0]
                self.record.api_errors[code] = self.record.api_errors.get(code, 0) + 1
            return reply.status, reply.data
        raise DemoError(f"{req.method} {req.path}: no answer after {TRIES} tries")

    async def call(
        self, method: str, path: str, key: str | None, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        return await self.send(Request(method, path, body, headers=headers or {}), key)


async def run(
    scenario: Scenario,
    endpoint: str,
    operator_key: str,
    clock: Clock,
    factor: float,
    progress: Callable[[float, str], None] = lambda _f, _s: None,
) -> Record:
    """Play ``scenario`` against the cloud at ``endpoint``; ``progress(fraction, status)``
    is called as simulated time passes."""
    gpus: dict[str, int] = {}
    for h in scenario.hosts:
        gpus[h.sku] = gpus.get(h.sku, 0) + h.gpus
    record = Record(
        start=scenario.start.isoformat(),
        end=scenario.end.isoformat(),
        factor=factor,
        hosts=len(scenario.hosts),
        gpus=gpus,
        price_cut_at=scenario.price_cut_at.isoformat(),
        price_cuts={f"{s}/{c}": p for (s, c), p in scenario.price_cuts.items()},
        hard_budgets={t.tenant_id: t.hard_budget for t in scenario.tenants if t.hard_budget},
    )
    began = time.monotonic()
    async with AsyncClient(endpoint, retry_for_s=TRIES * 2) as client:
        api = Api(client, record)
        keys = await _set_up(api, scenario, operator_key, record, clock)
        await _play(api, scenario, operator_key, keys, clock, record, progress)
        await _close(api, scenario, keys, clock, record, progress)
    record.real_seconds = round(time.monotonic() - began, 1)
    return record


def _offset(scenario: Scenario, clock: Clock) -> float:
    return (clock.now() - scenario.start).total_seconds()


async def _ok(api: Api, method: str, path: str, key: str | None, body: Any = None) -> Any:
    status, data = await api.call(method, path, key, body)
    if status >= 300:
        raise DemoError(f"{method} {path}: {status} {data}")
    return data


async def _settle(api: Api, key: str, accepted: Any, within_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    doc: dict[str, Any] = accepted
    while doc["status"] == "pending":
        if time.monotonic() > deadline:
            raise DemoError(f"{accepted['what']}: still pending after {within_s:.0f} s")
        await asyncio.sleep(0.1)
        doc = await _ok(api, "GET", f"/v1/operations/{accepted['operation_id']}", key)
    return doc


async def _set_up(api: Api, scenario: Scenario, op: str, record: Record, clock: Clock) -> dict[str, str]:
    """The fleet, the tenants with their keys and accounts, and the announced price cut."""
    for chunk in range(0, len(scenario.hosts), 16):
        accepted = await asyncio.gather(
            *(_ok(api, "POST", "/v1/hosts", op, h.body()) for h in scenario.hosts[chunk : chunk + 16])
        )
        for a in accepted:
            done = await _settle(api, op, a)
            if done["status"] != "done" and done.get("code") != "duplicate_host":
                raise DemoError(f"{done['what']}: {done.get('code')}: {done.get('message')}")
    keys: dict[str, str] = {}
    for t in scenario.tenants:
        status, data = await api.send(v1.create_tenant(t.tenant_id, t.name), op)
        if status not in (201, 409):
            raise DemoError(f"creating tenant {t.tenant_id}: {status} {data}")
        keys[t.tenant_id] = (await _ok(api, "POST", f"/v1/tenants/{t.tenant_id}/keys", op))["key"]
        account = {"credit_limit": t.credit_limit, "soft_budget": t.soft_budget, "hard_budget": t.hard_budget}
        await _settle(api, op, await _ok(api, "PUT", f"/v1/accounts/{t.tenant_id}", op, account))
        credit = {"amount": t.credit, "reference": f"demo-{scenario.start:%Y%m}-{t.tenant_id}"}
        await _settle(api, op, await _ok(api, "POST", f"/v1/accounts/{t.tenant_id}/credits", op, credit))
    # Reserved capacity, granted by the operator for the month (reserved work runs within it).
    for r in scenario.reservations:
        grant = {
            "reservation_id": f"{r.tenant}-{r.sku}-{scenario.start:%Y%m}",
            "tenant_id": r.tenant,
            "sku": r.sku,
            "region": r.region,
            "gpus": r.gpus,
            "starts_at": scenario.start.isoformat(),
            "ends_at": (scenario.end + timedelta(days=1)).isoformat(),
        }
        done = await _settle(api, op, await _ok(api, "POST", "/v1/reservations", op, grant))
        if done["status"] != "done":
            raise DemoError(f"{done['what']}: {done.get('code')}: {done.get('message')}")
    # The mid-month price cut, announced now for later (versions never take effect in the past).
    prices = await _ok(api, "GET", "/v1/prices", None)
    rows = []
    for p in prices["prices"]:
        cut = scenario.price_cuts.get((p["sku"], p["price_class"]))
        if cut and p["region"] == "*":
            new = (Decimal(p["per_gpu_hour"]) * (100 - cut) / 100).quantize(Decimal("0.01"))
            rows.append({"sku": p["sku"], "price_class": p["price_class"], "per_gpu_hour": str(new)})
    version = {"version": f"demo-{scenario.price_cut_at:%Y%m%d}", "effective_at": scenario.price_cut_at.isoformat()}
    status, data = await api.call("POST", "/v1/prices/versions", op, {**version, "prices": rows})
    if status == 202:
        done = await _settle(api, op, data)
        if done["status"] != "done" and done.get("code") != "duplicate_version":
            raise DemoError(f"the price cut was refused: {done.get('message')}")
    record.events.append(
        {"at": scenario.price_cut_at.isoformat(), "kind": "price_cut", "detail": f"{len(rows)} prices cut"}
    )
    return keys


async def _play(
    api: Api,
    scenario: Scenario,
    op: str,
    keys: dict[str, str],
    clock: Clock,
    record: Record,
    progress: Callable[[float, str], None],
) -> None:
    horizon = scenario.days * 24 * HOUR - 2 * HOUR  # leave the month's last hours to wind down
    jobs, events = list(scenario.jobs), list(scenario.events)
    ends: dict[str, int] = {}  # workload id -> its run time
    completing: set[str] = set()
    blocked: set[str] = set()
    next_sample = 0.0
    while True:
        now = _offset(scenario, clock)
        if now >= horizon:
            break
        due_jobs = [j for j in jobs if j.at <= now]
        jobs = jobs[len(due_jobs) :]
        submits = []
        for j in due_jobs:
            request = v1.submit_workload(
                name=j.name,
                kind=j.kind,
                sku=j.sku,
                gpus_per_node=j.gpus_per_node,
                nodes=j.nodes,
                region=j.region,
                price_class=j.price_class,
                max_duration_s=min(j.duration_s * 2 + 6 * HOUR, 90 * 24 * HOUR),
                idempotency_key=f"demo-{j.name}",
            )
            submits.append(api.send(request, keys[j.tenant]))
        for j, (status, data) in zip(due_jobs, await asyncio.gather(*submits), strict=True):
            if status == 202:
                ends[data["workload_id"]] = j.duration_s
                record.submitted += 1
        due_events = [e for e in events if e.at <= now]
        events = events[len(due_events) :]
        for e in due_events:
            await _operate(api, op, e, scenario, record)
        if now >= next_sample:
            next_sample = now + HOUR
            await _sample(api, op, keys, scenario, clock, record, ends, completing, blocked)
        when = f"{scenario.start + timedelta(seconds=now):%b %d %H:%M}"
        progress(max(0.0, min(1.0, now / horizon)), when if now >= 0 else f"{when}, starts {scenario.start:%b %d}")
        await clock.sleep(HOUR / 4)


async def _operate(api: Api, op: str, e: Any, scenario: Scenario, record: Record) -> None:
    path = {
        "fault": (f"/v1/hosts/{e.host_id}/faults", {"gpu_index": e.gpu_index, "code": e.detail}, "POST"),
        "repair": (f"/v1/hosts/{e.host_id}/faults/{e.gpu_index}", None, "DELETE"),
        "drain": (f"/v1/hosts/{e.host_id}/drain", {"reason": e.detail}, "POST"),
        "undrain": (f"/v1/hosts/{e.host_id}/undrain", None, "POST"),
    }[e.kind]
    status, _ = await api.call(path[2], path[0], op, path[1])
    if status == 202:
        # Not waited for: the cloud settles it while the demo goes on.
        at = scenario.start + timedelta(seconds=e.at)
        record.events.append({"at": at.isoformat(), "kind": e.kind, "host": e.host_id, "gpu": e.gpu_index})


async def _workloads(api: Api, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = ""
    while True:
        page = await _ok(api, "GET", "/v1/workloads?limit=200" + (f"&after={after}" if after else ""), key)
        items += page["items"]
        if not page["next"]:
            return items
        after = page["next"]


async def _sample(
    api: Api,
    op: str,
    keys: dict[str, str],
    scenario: Scenario,
    clock: Clock,
    record: Record,
    ends: dict[str, int],
    completing: set[str],
    blocked: set[str],
) -> None:
    """Capacity and queues now; complete the jobs whose time is up; note budget stops."""
    at = clock.now()
    cap, lists, budgets = await asyncio.gather(
        _ok(api, "GET", "/v1/capacity", op),
        asyncio.gather(*(_workloads(api, k) for k in keys.values())),
        asyncio.gather(*(_ok(api, "GET", "/v1/budget", k) for k in keys.values())),
    )
    queued: dict[str, int] = {}
    done = []
    for wl in (w for ws in lists for w in ws):
        if wl["status"] == "queued":
            queued[wl.get("kind", "?")] = queued.get(wl.get("kind", "?"), 0) + 1
        wid = wl["workload_id"]
        if wl["status"] == "running" and wid in ends and wid not in completing:
            started = datetime.fromisoformat(wl["started_at"])
            if at >= started + timedelta(seconds=ends[wid]):
                completing.add(wid)
                done.append(wid)
    tenant_of = {w["workload_id"]: t for t, ws in zip(keys, lists, strict=True) for w in ws}
    await asyncio.gather(*(api.send(v1.complete_workload(w), keys[tenant_of[w]]) for w in done))
    for tenant, b in zip(keys, budgets, strict=True):
        if b.get("state") == "blocked" and tenant not in blocked:
            blocked.add(tenant)
            record.events.append({"at": at.isoformat(), "kind": "budget", "tenant": tenant, "detail": b.get("cause")})
        elif b.get("state") == "ok" and tenant in blocked:
            blocked.discard(tenant)
            record.events.append({"at": at.isoformat(), "kind": "budget_restored", "tenant": tenant})
    record.samples.append(
        {
            "at": at.isoformat(),
            "capacity": {
                f"{r['sku']}|{r['region']}": {k: r[k] for k in ("total", "allocated", "faulted", "draining")}
                for r in cap["items"]
            },
            "queued": queued,
        }
    )


async def _close(
    api: Api,
    scenario: Scenario,
    keys: dict[str, str],
    clock: Clock,
    record: Record,
    progress: Callable[[float, str], None],
) -> None:
    """End the month: complete what runs, cancel what waits, wait for final invoices."""
    progress(1.0, "closing the month")
    for key in keys.values():
        for wl in await _workloads(api, key):
            if wl["status"] == "running":
                await api.send(v1.complete_workload(wl["workload_id"]), key)
            elif wl["status"] in ("queued", "accepted", "submitted"):
                await api.send(v1.cancel_workload(wl["workload_id"]), key)
    month = f"{scenario.start:%Y-%m}"
    month_end = (scenario.start.replace(day=1) + timedelta(days=32)).replace(day=1)
    final = scenario.end >= month_end
    # A whole month closes once all its usage is rated (soon after its end: the work was
    # just completed, billing's watermark passes at the next tick); a shorter run reads the
    # draft three simulated hours after its last completions (billing announces a changed
    # invoice on every tick, ten simulated minutes in the demo).
    settle_at = (month_end + timedelta(hours=1, minutes=30)) if final else clock.now() + timedelta(hours=3)
    while clock.now() < settle_at:
        await clock.sleep(min(HOUR / 2, max(1.0, (settle_at - clock.now()).total_seconds())))
    deadline = time.monotonic() + 120
    for tenant, key in keys.items():
        while True:
            status, inv = await api.send(v1.invoice(month), key)
            if status == 200 and (inv["status"] == "final" or not final):
                record.invoices.append({"tenant": tenant, **inv})
                break
            if status == 404 and time.monotonic() > deadline - 100:
                break  # a tenant that used nothing has no invoice
            if time.monotonic() > deadline:
                what = "final" if final else "up to date"
                raise DemoError(f"the {month} invoice of {tenant} was not {what} 2 minutes after the run ended")
            await asyncio.sleep(0.5)
    for tenant, key in keys.items():
        record.workloads += [{"tenant": tenant, **w} for w in await _workloads(api, key)]
