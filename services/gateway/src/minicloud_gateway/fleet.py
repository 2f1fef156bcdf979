"""Operator and tenant routes beyond workloads: hosts and capacity, availability, price
catalog versions, accounts and credits, usage, invoices and budgets.

Writes are commands on the owning service's stream, answered 202 with an operation the
caller can follow (``/v1/operations/{id}``: pending, then done or rejected with the
owner's reason). Reads come from the gateway's projections.
"""

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, Strict
from redis.asyncio import Redis

from minicloud_gateway import schemas as sc
from minicloud_gateway.guard import ApiError, MemoryGuard
from minicloud_gateway.identity import Caller, tenant_exists
from minicloud_gateway.projections import (
    CATALOG,
    HOSTS,
    RESERVATION_TENANTS,
    account_key,
    allocations_key,
    create_doc,
    host_key,
    invoice_key,
    invoices_key,
    members,
    op_key,
    ranked,
    read_doc,
    read_docs,
    request_digest,
    reservations_key,
    workload_key,
)
from minicloud_shared.clock import Clock
from minicloud_shared.contracts import Payload, derived_event_id, new_event_id, text
from minicloud_shared.contracts.billing import AddCredit, PriceRow, PublishPriceCatalog, SetAccount, SetCommitment
from minicloud_shared.contracts.inventory import (
    ClearGpuFault,
    DecommissionHost,
    DrainHost,
    RegisterHost,
    ReportGpuFault,
    UndrainHost,
)
from minicloud_shared.contracts.scheduling import GrantReservation
from minicloud_shared.pricing import base_catalog
from minicloud_shared.runtime import publish
from minicloud_shared.skus import skus

_MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"
# An operator's command on a target that may not exist (404) or a reused key (409).
OP_ON_TARGET: dict[str, Any] = {"response_model": sc.Operation, "responses": sc.errors(404, 409)}
_ID = r"^[a-z0-9][a-z0-9\-_.]{0,62}$"
_TEXT = r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*$"  # no control characters, no bidi overrides
Int = Annotated[int, Strict()]
IdPath = Annotated[str, Path(pattern=_ID, max_length=63)]
IdQuery = Annotated[str | None, Query(pattern=_ID, max_length=63)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostIn(_Body):
    host_id: str = Field(pattern=_ID, examples=["eu1-a-r01-h01"])
    region: str = Field(pattern=_ID, examples=["eu-1"])
    zone: str = Field(pattern=_ID, examples=["eu-1a"])
    rack: str = Field(pattern=_ID, examples=["eu-1a-r01"])
    nvlink_domain: str = Field(pattern=_ID, examples=["eu-1a-r01-nvl0"])
    sku: str = Field(pattern=_ID, max_length=63, examples=["h100-80gb-sxm"])
    gpu_count: Int = Field(ge=1, le=72, examples=[8])


class DrainIn(_Body):
    reason: str = Field("", max_length=500, pattern=_TEXT, examples=["firmware upgrade"])


class FaultIn(_Body):
    gpu_index: Int = Field(ge=0, le=71, examples=[3])
    code: str = Field(min_length=1, max_length=64, pattern=_ID, examples=["xid-79"])
    detail: str = Field("", max_length=500, pattern=_TEXT, examples=["GPU has fallen off the bus"])


class PriceIn(_Body):
    sku: str = Field(pattern=_ID, max_length=63, examples=["h100-80gb-sxm"])
    region: str = Field("*", pattern=r"^\*$|" + _ID, max_length=63, examples=["*"])
    price_class: str = Field(pattern=r"^(on_demand|spot|reserved)$", examples=["on_demand"])
    per_gpu_hour: Decimal = Field(ge=0, le=10_000, decimal_places=6, examples=["2.39"])


class CatalogIn(_Body):
    version: str = Field(pattern=r"^[A-Za-z0-9\-_.]{1,32}$", examples=["2026-12"])
    effective_at: AwareDatetime = Field(examples=["2026-12-01T00:00:00Z"], description="With its UTC offset")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", examples=["USD"])
    prices: list[PriceIn] = Field(min_length=1, max_length=10_000)


class ReservationIn(_Body):
    reservation_id: str = Field(pattern=_ID, max_length=63, examples=["acme-h100-2026q4"])
    tenant_id: str = Field(pattern=_ID, max_length=63, examples=["acme"])
    sku: str = Field(pattern=_ID, max_length=63, examples=["h100-80gb-sxm"])
    region: str = Field(pattern=_ID, max_length=63, examples=["eu-1"])
    gpus: Int = Field(ge=1, le=100_000, examples=[16])
    starts_at: AwareDatetime = Field(examples=["2026-12-01T00:00:00Z"])
    ends_at: AwareDatetime = Field(examples=["2027-12-01T00:00:00Z"])


class AccountIn(_Body):
    credit_limit: Decimal = Field(Decimal(0), ge=0, le=10**12, decimal_places=2, examples=["1000"])
    soft_budget: Decimal | None = Field(None, ge=0, le=10**12, decimal_places=2, examples=["800"])
    hard_budget: Decimal | None = Field(None, ge=0, le=10**12, decimal_places=2, examples=["1000"])


class CreditIn(_Body):
    amount: Decimal = Field(gt=0, le=10**12, decimal_places=2, examples=["500.00"])
    reference: str = Field(min_length=1, max_length=128, pattern=_TEXT, examples=["pay-2026-11-0042"])


class CommitmentIn(_Body):
    gpu_hours_per_month: Int = Field(ge=0, le=10**9, examples=[5000])
    discount_pct: Decimal = Field(ge=0, lt=100, decimal_places=2, examples=["30"])


def add_routes(
    app: Any,
    redis: Redis,
    clock: Clock,
    caller: Callable[..., Any],
    operator: Callable[..., Any],
    tenant: Callable[..., Any],
    anonymous: Callable[..., Any],
    memory: MemoryGuard,
) -> None:
    """Register the routes on ``app``; ``caller``/``operator``/``tenant`` are the API's
    authentication dependencies, ``anonymous`` rate-limits public routes by address,
    ``memory`` refuses new commands while Redis is nearly full."""
    ops = APIRouter(tags=["operator"], responses=sc.AUTH)
    public = APIRouter(tags=["public"], dependencies=[Depends(anonymous)])
    billing = APIRouter(tags=["billing"], responses=sc.AUTH)
    shared = APIRouter(tags=["workloads"], responses=sc.AUTH)  # operator and tenants, each seeing what is theirs
    Operator = Annotated[Caller, Depends(operator)]
    Tenant = Annotated[str, Depends(tenant)]
    IdemKey = Annotated[str | None, Header(min_length=1, max_length=128, pattern=_TEXT)]
    error = ApiError

    async def command(
        payload: Payload, what: str, idempotency_key: str | None, target: str, tenant_id: str | None = None
    ) -> JSONResponse:
        """Publish an operator's command. An Idempotency-Key is scoped to the command and
        its target (a host, a tenant): the same key and body answer with the operation as
        it stands (the command is applied once); a different body with it is refused, for
        as long as the operation is kept. The same key for another target is another
        operation."""
        body = {"t": payload.event_type, **payload.model_dump(mode="json")}
        digest = request_digest(body)
        if idempotency_key is not None:
            event_id = derived_event_id("operator", payload.event_type, target, idempotency_key)
        else:
            event_id = new_event_id()
        current = await read_doc(redis, op_key(event_id))
        if current is None:
            await memory.check()
            pending = {
                "operation_id": event_id,
                "status": "pending",
                "command": payload.event_type,
                "what": what,
                "request_digest": digest,
            }
            current = await create_doc(redis, op_key(event_id), pending)
        if current.get("request_digest", digest) != digest:
            raise error(409, "idempotency_key_reused", "this Idempotency-Key was used with a different body")
        if current["status"] == "pending":
            await publish(redis, payload, producer="gateway", tenant_id=tenant_id, event_id=event_id, clock=clock)
        view = sc.Operation.model_validate(current).model_dump(mode="json", exclude_none=True)
        return JSONResponse(view, status_code=202, headers={"Location": f"/v1/operations/{event_id}"})

    @ops.get("/v1/operations/{operation_id}", response_model=sc.Operation, responses=sc.errors(404))
    async def operation(operation_id: Annotated[str, Path(max_length=64)], _: Operator) -> dict[str, Any]:
        """How an operator's command ended: pending, done, rejected (the owner refused it)
        or failed (it could not be applied), with the reason."""
        doc = await read_doc(redis, op_key(operation_id))
        if doc is None:
            raise error(404, "not_found", f"no operation {operation_id}")
        return {k: v for k, v in doc.items() if k != "request_digest"}

    # --- hosts and capacity ----------------------------------------------------------

    async def _hosts() -> list[dict[str, Any]]:
        docs = await read_docs(redis, [host_key(h) for h in await members(redis, HOSTS)])
        return [_host_view(d) for d in docs if d is not None]

    @ops.post("/v1/hosts", status_code=202, response_model=sc.Operation, responses=sc.errors(409))
    async def register_host(body: HostIn, _: Operator, idempotency_key: IdemKey = None) -> JSONResponse:
        """Add a host and its GPUs to the fleet."""
        return await command(
            RegisterHost(**body.model_dump()), f"register host {body.host_id}", idempotency_key, body.host_id
        )

    @ops.get("/v1/hosts", response_model=sc.Hosts)
    async def list_hosts(
        _: Operator,
        region: IdQuery = None,
        sku: IdQuery = None,
        state: IdQuery = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: IdQuery = None,
    ) -> dict[str, Any]:
        """The fleet's hosts by id, with state and GPUs free, allocated and faulted."""
        rows = [
            h
            for h in await _hosts()
            if h.get("sku")
            and (region is None or h["region"] == region)
            and (sku is None or h["sku"] == sku)
            and (state is None or h["state"] == state)
            and (after is None or h["host_id"] > after)
        ]
        page = rows[:limit]
        return {"items": page, "next": page[-1]["host_id"] if len(rows) > limit else None}

    @ops.get("/v1/hosts/{host_id}", response_model=sc.HostOut, responses=sc.errors(404))
    async def get_host(host_id: IdPath, _: Operator) -> dict[str, Any]:
        return _host_view(await _known_host(host_id))

    async def _known_host(host_id: str) -> dict[str, Any]:
        doc = await read_doc(redis, host_key(host_id))
        if doc is None or not doc.get("sku"):  # events about it came, its registration not yet
            raise error(404, "not_found", f"no host {host_id}")
        return doc

    @ops.post("/v1/hosts/{host_id}/drain", status_code=202, **OP_ON_TARGET)
    async def drain(host_id: IdPath, body: DrainIn, _: Operator, idempotency_key: IdemKey = None) -> JSONResponse:
        """Stop placing work on a host; its running work is requeued elsewhere."""
        await _known_host(host_id)
        return await command(
            DrainHost(host_id=host_id, reason=body.reason or "drained by the operator"),
            f"drain {host_id}",
            idempotency_key,
            host_id,
        )

    @ops.post("/v1/hosts/{host_id}/undrain", status_code=202, **OP_ON_TARGET)
    async def undrain(host_id: IdPath, _: Operator, idempotency_key: IdemKey = None) -> JSONResponse:
        await _known_host(host_id)
        return await command(UndrainHost(host_id=host_id), f"undrain {host_id}", idempotency_key, host_id)

    @ops.post("/v1/hosts/{host_id}/decommission", status_code=202, **OP_ON_TARGET)
    async def decommission(host_id: IdPath, _: Operator, idempotency_key: IdemKey = None) -> JSONResponse:
        """Remove a host for good (refused while work runs on it: drain it first)."""
        await _known_host(host_id)
        return await command(DecommissionHost(host_id=host_id), f"decommission {host_id}", idempotency_key, host_id)

    @ops.post("/v1/hosts/{host_id}/faults", status_code=202, **OP_ON_TARGET)
    async def report_fault(
        host_id: IdPath, body: FaultIn, _: Operator, idempotency_key: IdemKey = None
    ) -> JSONResponse:
        """A GPU failed: take it out of service (work on it is requeued, its time not charged)."""
        await _known_host(host_id)
        return await command(
            ReportGpuFault(host_id=host_id, **body.model_dump()),
            f"fault {host_id}/{body.gpu_index}",
            idempotency_key,
            host_id,
        )

    @ops.delete("/v1/hosts/{host_id}/faults/{gpu_index}", status_code=202, **OP_ON_TARGET)
    async def clear_fault(
        host_id: IdPath, gpu_index: Annotated[int, Path(ge=0, le=71)], _: Operator, idempotency_key: IdemKey = None
    ) -> JSONResponse:
        """A faulted GPU was repaired: back in service."""
        await _known_host(host_id)
        return await command(
            ClearGpuFault(host_id=host_id, gpu_index=gpu_index),
            f"clear {host_id}/{gpu_index}",
            idempotency_key,
            host_id,
        )

    @ops.get("/v1/capacity", response_model=sc.Capacity)
    async def capacity(_: Operator) -> dict[str, Any]:
        """GPUs total, free, allocated, faulted and draining per SKU and region, and the fleet."""
        return _capacity(await _hosts())

    @public.get("/v1/availability", response_model=sc.Availability)
    async def availability() -> dict[str, Any]:
        """GPUs free now per SKU and region, and the most free on one host (public)."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for h in await _hosts():
            if not h.get("sku") or h["state"] not in ("active", "draining"):
                continue
            blank = {"sku": h["sku"], "region": h["region"], "free_gpus": 0, "max_free_on_one_host": 0}
            r = rows.setdefault((h["sku"], h["region"]), blank)
            free = h["free"] if h["state"] == "active" else 0
            r["free_gpus"] += free
            r["max_free_on_one_host"] = max(r["max_free_on_one_host"], free)
        return {"items": [rows[k] for k in sorted(rows)]}

    @public.get("/v1/regions", response_model=sc.Regions)
    async def regions() -> dict[str, Any]:
        """The regions, their zones and the GPU models offered in each (public)."""
        found: dict[str, dict[str, set[str]]] = {}
        for h in await _hosts():
            if h.get("sku") and h["state"] != "decommissioned":
                r = found.setdefault(h["region"], {"zones": set(), "skus": set()})
                r["zones"].add(h["zone"])
                r["skus"].add(h["sku"])
        return {
            "items": [
                {"region": name, "zones": sorted(r["zones"]), "skus": sorted(r["skus"])}
                for name, r in sorted(found.items())
            ]
        }

    # --- price catalog versions -------------------------------------------------------

    @ops.post("/v1/prices/versions", status_code=202, **OP_ON_TARGET)
    async def publish_catalog(body: CatalogIn, _: Operator, idempotency_key: IdemKey = None) -> JSONResponse:
        """Announce a catalog version: it lists what changes, from ``effective_at`` (in the future)."""
        unknown = sorted({p.sku for p in body.prices} - set(skus()))
        if unknown:
            raise error(422, "unknown_sku", f"no SKU {', '.join(unknown)}: see /v1/skus")
        cmd = PublishPriceCatalog(
            version=body.version,
            effective_at=body.effective_at,
            currency=body.currency,
            prices=[PriceRow.model_validate(p.model_dump(mode="json"), strict=False) for p in body.prices],
        )
        return await command(cmd, f"publish catalog {body.version}", idempotency_key, body.version)

    @public.get("/v1/prices/versions", response_model=sc.CatalogVersions)
    async def catalog_versions() -> dict[str, Any]:
        """Every catalog version, oldest first: the base list and those published after it (public)."""
        base = base_catalog()
        doc = await read_doc(redis, CATALOG) or {"versions": []}
        items = [{"version": base.version, "effective_at": base.effective_at.isoformat(), "currency": base.currency}]
        items += [{k: v[k] for k in ("version", "effective_at", "currency")} for v in doc["versions"]]
        return {"items": items}

    # --- reservations -----------------------------------------------------------------

    @ops.post("/v1/reservations", status_code=202, **OP_ON_TARGET)
    async def grant_reservation(body: ReservationIn, _: Operator, idempotency_key: IdemKey = None) -> JSONResponse:
        """Grant a tenant reserved capacity: GPUs of a SKU in a region for a term. Its work
        submitted as ``reserved`` runs within it at the reserved price, ahead of on-demand work."""
        await _tenant(body.tenant_id)
        if body.sku not in skus():
            raise error(422, "unknown_sku", f"no GPU SKU {body.sku!r}: see /v1/skus")
        if body.ends_at <= body.starts_at or body.ends_at <= clock.now():
            raise error(422, "bad_term", "a reservation ends after it starts, and in the future")
        fields = body.model_dump(exclude={"tenant_id"})
        return await command(
            GrantReservation(**fields),
            f"reserve {body.gpus} x {body.sku} in {body.region} for {body.tenant_id}",
            idempotency_key,
            f"{body.tenant_id}/{body.reservation_id}",
            body.tenant_id,
        )

    @shared.get("/v1/reservations", response_model=sc.Reservations)
    async def list_reservations(who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
        """Reservations: a tenant's own, or every tenant's for the operator."""
        tenants = [who.tenant] if who.tenant is not None else await members(redis, RESERVATION_TENANTS)
        docs = await read_docs(redis, [reservations_key(t) for t in tenants])
        rows = [r for d in docs if d is not None for r in d["items"].values()]
        now = clock.now()
        for r in rows:
            r["in_force"] = datetime.fromisoformat(r["starts_at"]) <= now < datetime.fromisoformat(r["ends_at"])
        return {"items": sorted(rows, key=lambda r: (r["tenant"], r["reservation_id"]))}

    # --- accounts (operator) ----------------------------------------------------------

    async def _tenant(tenant_id: str) -> None:
        if not await tenant_exists(redis, tenant_id):
            raise error(404, "not_found", f"no tenant {tenant_id}")

    @ops.get("/v1/accounts/{tenant_id}", response_model=sc.Account, responses=sc.errors(404))
    async def get_account(tenant_id: IdPath, _: Operator) -> dict[str, Any]:
        """A tenant's account: credit, limits, budgets, charges and state."""
        await _tenant(tenant_id)
        return _account_view(tenant_id, await read_doc(redis, account_key(tenant_id)))

    @ops.put("/v1/accounts/{tenant_id}", status_code=202, **OP_ON_TARGET)
    async def set_account(
        tenant_id: IdPath, body: AccountIn, _: Operator, idempotency_key: IdemKey = None
    ) -> JSONResponse:
        """Set a tenant's credit limit and monthly soft and hard budgets."""
        await _tenant(tenant_id)
        if body.soft_budget is not None and body.hard_budget is not None and body.soft_budget > body.hard_budget:
            raise error(422, "bad_budget", "the soft budget is above the hard budget")
        return await command(
            SetAccount(**body.model_dump()), f"set account {tenant_id}", idempotency_key, tenant_id, tenant_id
        )

    @ops.post("/v1/accounts/{tenant_id}/credits", status_code=202, **OP_ON_TARGET)
    async def add_credit(
        tenant_id: IdPath, body: CreditIn, _: Operator, idempotency_key: IdemKey = None
    ) -> JSONResponse:
        """Add prepaid credit (a payment, a grant); a reference is credited once."""
        await _tenant(tenant_id)
        return await command(
            AddCredit(**body.model_dump()),
            f"credit {body.amount} to {tenant_id}",
            idempotency_key,
            tenant_id,
            tenant_id,
        )

    @ops.put("/v1/accounts/{tenant_id}/commitments/{sku}", status_code=202, **OP_ON_TARGET)
    async def set_commitment(
        tenant_id: IdPath, sku: IdPath, body: CommitmentIn, _: Operator, idempotency_key: IdemKey = None
    ) -> JSONResponse:
        """A committed-use discount: GPU-hours of a SKU a month at a discount (0 hours ends it)."""
        await _tenant(tenant_id)
        if sku not in skus():
            raise error(404, "not_found", f"no SKU {sku}")
        return await command(
            SetCommitment(sku=sku, **body.model_dump()),
            f"commitment {tenant_id}/{sku}",
            idempotency_key,
            f"{tenant_id}/{sku}",
            tenant_id,
        )

    # --- the tenant's bills -----------------------------------------------------------

    async def _invoice(who: str, month: str) -> dict[str, Any]:
        doc = await read_doc(redis, invoice_key(who, month))
        if doc is None:
            raise error(404, "not_found", f"no invoice for {month}")
        return doc

    @billing.get("/v1/invoices", response_model=sc.Invoices)
    async def list_invoices(who: Tenant) -> dict[str, Any]:
        """The tenant's invoices, newest first: the open month's draft and the final ones."""
        months = await ranked(redis, invoices_key(who), newest_first=True)
        docs = await read_docs(redis, [invoice_key(who, m) for m in months])
        fields = ("invoice_id", "month", "status", "currency", "total", "as_of")
        return {"items": [{k: inv[k] for k in fields} for inv in docs if inv is not None]}

    @billing.get("/v1/invoices/{month}", response_model=sc.Invoice, responses=sc.errors(404))
    async def get_invoice(month: Annotated[str, Path(pattern=_MONTH)], who: Tenant) -> dict[str, Any]:
        """An invoice with its lines (a draft shows charges so far, updated every few seconds)."""
        inv = await _invoice(who, month)
        lines = [{k: v for k, v in ln.items() if k != "allocations"} for ln in inv["lines"]]
        return {**{k: v for k, v in inv.items() if k not in ("lines", "tenant")}, "lines": lines}

    @billing.get("/v1/invoices/{month}/lines/{line_id}", response_model=sc.LineExplanation, responses=sc.errors(404))
    async def explain_line(
        month: Annotated[str, Path(pattern=_MONTH)],
        line_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9\-_.|*:]{1,200}$")],
        who: Tenant,
    ) -> dict[str, Any]:
        """Why a line was charged: its quantity and price, and the allocations and
        workloads behind it (the largest 200)."""
        inv = await _invoice(who, month)
        line = next((ln for ln in inv["lines"] if ln["line_id"] == line_id), None)
        if line is None:
            raise error(404, "not_found", f"invoice {inv['invoice_id']} has no line {line_id}")
        allocs = line["allocations"]
        found: list[Any] = (
            await redis.hmget(allocations_key(who), [a["allocation_id"] for a in allocs]) if allocs else []
        )
        wids = [None if w is None else text(w) for w in found]
        docs = await read_docs(redis, [workload_key(who, w) for w in wids if w is not None])
        names = iter(docs)
        rows = [
            {
                **a,
                "gpu_hours": _hours(a["gpu_seconds"]),
                "workload_id": w,
                "workload_name": (next(names) or {}).get("name") if w is not None else None,
            }
            for a, w in zip(allocs, wids, strict=True)
        ]
        hours = _hours(line["gpu_seconds"])
        how = (
            f"{hours} GPU-hours x {line['unit_price']} {inv['currency']}/GPU-hour = {line['amount']} {inv['currency']}"
            if line["kind"] in ("usage", "minimum", "commitment_shortfall")
            else f"{line['amount']} {inv['currency']}"
        )
        return {
            "invoice_id": inv["invoice_id"],
            "status": inv["status"],
            **{k: v for k, v in line.items() if k != "allocations"},
            "gpu_hours": hours,
            "computation": how,
            "allocations": rows,
        }

    @billing.get("/v1/usage", response_model=sc.Usage)
    async def usage(
        who: Tenant,
        from_month: Annotated[str | None, Query(alias="from", pattern=_MONTH)] = None,
        to_month: Annotated[str | None, Query(alias="to", pattern=_MONTH)] = None,
    ) -> dict[str, Any]:
        """GPU-hours and charges per month, SKU, region and price class (months from..to, inclusive)."""
        months = [
            m
            for m in await ranked(redis, invoices_key(who))
            if (from_month is None or m >= from_month) and (to_month is None or m <= to_month)
        ]
        out = []
        for inv in await read_docs(redis, [invoice_key(who, m) for m in months]):
            if inv is None:
                continue
            groups: dict[tuple[str, str, str], list[Decimal]] = {}
            for ln in inv["lines"]:
                if ln["kind"] not in ("usage", "minimum"):
                    continue
                g = groups.setdefault((ln["sku"], ln["region"], ln["price_class"]), [Decimal(0), Decimal(0)])
                g[0] += ln["gpu_seconds"]
                g[1] += Decimal(ln["amount"])
            out.append(
                {
                    "month": inv["month"],
                    "status": inv["status"],
                    "as_of": inv["as_of"],
                    "currency": inv["currency"],
                    "items": [
                        {
                            "sku": s,
                            "region": r,
                            "price_class": c,
                            "gpu_hours": _hours(secs),
                            "amount": str(amount),
                        }
                        for (s, r, c), (secs, amount) in sorted(groups.items())
                    ],
                }
            )
        return {"months": out}

    @billing.get("/v1/budget", response_model=sc.Account)
    async def budget(who: Tenant) -> dict[str, Any]:
        """The tenant's credit, budgets, charges this month and whether new work is admitted."""
        return _account_view(who, await read_doc(redis, account_key(who)))

    app.include_router(ops)
    app.include_router(public)
    app.include_router(billing)
    app.include_router(shared)


def _hours(gpu_seconds: Decimal | int) -> str:
    return str((Decimal(gpu_seconds) / 3600).quantize(Decimal("0.0001")))


def _host_view(doc: dict[str, Any]) -> dict[str, Any]:
    gpus = int(doc.get("gpus", 0))
    busy = {i for held in doc["busy"].values() for i in held}
    faulted = set(doc["faulted"]) - busy
    free = max(0, gpus - len(busy) - len(faulted))
    return {
        **{k: doc.get(k) for k in ("host_id", "region", "zone", "rack", "nvlink_domain", "sku", "state")},
        "gpus": gpus,
        "free": free if doc["state"] == "active" else 0,
        "allocated": len(busy),
        "faulted": sorted(doc["faulted"]),
        "allocations": sorted(doc["busy"]),
        "drain_reason": doc.get("drain_reason", ""),
        "generation": doc.get("generation", 0),
    }


def _capacity(hosts: list[dict[str, Any]]) -> dict[str, Any]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    fields = ("hosts", "total", "free", "allocated", "faulted", "draining")
    for h in hosts:
        if not h.get("sku") or h["state"] == "decommissioned":
            continue
        blank = {"sku": h["sku"], "region": h["region"], **dict.fromkeys(fields, 0)}
        r = rows.setdefault((h["sku"], h["region"]), blank)
        faulted = len(h["faulted"])
        r["hosts"] += 1
        r["total"] += h["gpus"]
        r["allocated"] += h["allocated"]
        r["faulted"] += faulted
        r["free"] += h["free"]
        if h["state"] == "draining":
            r["draining"] += max(0, h["gpus"] - h["allocated"] - faulted)
    items = []
    for key in sorted(rows):
        r = rows[key]
        tflops = skus()[r["sku"]].bf16_tflops if r["sku"] in skus() else Decimal(0)
        r["utilization"] = round(r["allocated"] / r["total"], 4) if r["total"] else 0.0
        r["bf16_pflops"] = str((Decimal(r["total"] - r["faulted"]) * tflops / 1000).quantize(Decimal("0.001")))
        items.append(r)
    fleet = {f: sum(r[f] for r in items) for f in fields}
    fleet["utilization"] = round(fleet["allocated"] / fleet["total"], 4) if fleet["total"] else 0.0
    return {"items": items, "fleet": fleet}


def _account_view(tenant: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    """An account as shown: billing's last snapshot and its budget events."""
    if doc is None or "credits" not in doc:
        return {
            "tenant": tenant,
            "state": (doc or {}).get("state", "ok"),
            "note": "no charges or account settings yet",
            "alerts": (doc or {}).get("alerts", []),
        }
    credits, limit, charged = Decimal(doc["credits"]), Decimal(doc["credit_limit"]), Decimal(doc["charged"])
    postpaid = credits == 0 and limit == 0 and doc.get("hard_budget") is None and doc.get("state", "ok") == "ok"
    return {
        "tenant": tenant,
        "currency": doc["currency"],
        "state": doc.get("state", "ok"),
        "cause": doc.get("cause"),
        "credits": doc["credits"],
        "credit_limit": doc["credit_limit"],
        "charged": doc["charged"],
        "available": None if postpaid else str(credits + limit - charged),
        "postpaid": postpaid,
        "soft_budget": doc.get("soft_budget"),
        "hard_budget": doc.get("hard_budget"),
        "month": doc.get("month"),
        "month_charged": doc.get("month_charged"),
        "as_of": doc.get("as_of"),
        "alerts": doc.get("alerts", []),
    }
