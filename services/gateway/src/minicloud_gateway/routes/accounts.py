"""Money: accounts, credit and commitments (the operator's), and each tenant's
invoices, line explanations, usage and budget."""

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from minicloud_gateway import schemas as sc
from minicloud_gateway.commands import command
from minicloud_gateway.deps import MONTH, TEXT, Gateway, IdemKey, IdPath, Int, MonthPath, Operator, State, Tenant
from minicloud_gateway.guard import ApiError
from minicloud_gateway.routes.tenants import known_tenant
from minicloud_gateway.store import (
    account_key,
    allocations_key,
    invoice_key,
    invoices_key,
    ranked,
    read_doc,
    read_docs,
    workload_key,
)
from minicloud_shared.contracts import text
from minicloud_shared.contracts.billing import AddCredit, SetAccount, SetCommitment
from minicloud_shared.pricing import available_credit
from minicloud_shared.skus import skus

ops = APIRouter(tags=["operator"], responses=sc.AUTH)
billing = APIRouter(tags=["billing"], responses=sc.AUTH)
OP_ON_TARGET: dict[str, Any] = {"response_model": sc.Operation, "responses": sc.errors(404, 409)}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccountIn(_Body):
    credit_limit: Decimal = Field(Decimal(0), ge=0, le=10**12, decimal_places=2, examples=["1000"])
    soft_budget: Decimal | None = Field(None, ge=0, le=10**12, decimal_places=2, examples=["800"])
    hard_budget: Decimal | None = Field(None, ge=0, le=10**12, decimal_places=2, examples=["1000"])


class CreditIn(_Body):
    amount: Decimal = Field(gt=0, le=10**12, decimal_places=2, examples=["500.00"])
    reference: str = Field(min_length=1, max_length=128, pattern=TEXT, examples=["pay-2026-11-0042"])


class CommitmentIn(_Body):
    gpu_hours_per_month: Int = Field(ge=0, le=10**9, examples=[5000])
    discount_pct: Decimal = Field(ge=0, lt=100, decimal_places=2, examples=["30"])


# --- accounts (operator) ----------------------------------------------------------------


@ops.get("/v1/accounts/{tenant_id}", response_model=sc.Account, responses=sc.errors(404))
async def get_account(tenant_id: IdPath, _: Operator, g: State) -> dict[str, Any]:
    """A tenant's account: credit, limits, budgets, charges and state."""
    await known_tenant(g, tenant_id)
    return account_view(tenant_id, await read_doc(g.redis, account_key(tenant_id)))


@ops.put("/v1/accounts/{tenant_id}", status_code=202, **OP_ON_TARGET)
async def set_account(
    tenant_id: IdPath, body: AccountIn, _: Operator, g: State, idempotency_key: IdemKey = None
) -> JSONResponse:
    """Set a tenant's credit limit and monthly soft and hard budgets."""
    await known_tenant(g, tenant_id)
    if body.soft_budget is not None and body.hard_budget is not None and body.soft_budget > body.hard_budget:
        raise ApiError(422, "bad_budget", "the soft budget is above the hard budget")
    cmd = SetAccount(**body.model_dump())
    return await command(g, cmd, f"set account {tenant_id}", idempotency_key, tenant_id, tenant_id)


@ops.post("/v1/accounts/{tenant_id}/credits", status_code=202, **OP_ON_TARGET)
async def add_credit(
    tenant_id: IdPath, body: CreditIn, _: Operator, g: State, idempotency_key: IdemKey = None
) -> JSONResponse:
    """Add prepaid credit (a payment, a grant); a reference is credited once."""
    await known_tenant(g, tenant_id)
    cmd = AddCredit(**body.model_dump())
    return await command(g, cmd, f"credit {body.amount} to {tenant_id}", idempotency_key, tenant_id, tenant_id)


@ops.put("/v1/accounts/{tenant_id}/commitments/{sku}", status_code=202, **OP_ON_TARGET)
async def set_commitment(
    tenant_id: IdPath, sku: IdPath, body: CommitmentIn, _: Operator, g: State, idempotency_key: IdemKey = None
) -> JSONResponse:
    """A committed-use discount: GPU-hours of a SKU a month at a discount (0 hours ends it)."""
    await known_tenant(g, tenant_id)
    if sku not in skus():
        raise ApiError(404, "not_found", f"no SKU {sku}")
    cmd = SetCommitment(sku=sku, **body.model_dump())
    return await command(g, cmd, f"commitment {tenant_id}/{sku}", idempotency_key, f"{tenant_id}/{sku}", tenant_id)


# --- the tenant's bills -------------------------------------------------------------------


async def _invoice(g: Gateway, who: str, month: str) -> dict[str, Any]:
    doc = await read_doc(g.redis, invoice_key(who, month))
    if doc is None:
        raise ApiError(404, "not_found", f"no invoice for {month}")
    return doc


@billing.get("/v1/invoices", response_model=sc.Invoices)
async def list_invoices(who: Tenant, g: State) -> dict[str, Any]:
    """The tenant's invoices, newest first: the open month's draft and the final ones."""
    months = await ranked(g.redis, invoices_key(who), newest_first=True)
    docs = await read_docs(g.redis, [invoice_key(who, m) for m in months])
    fields = ("invoice_id", "month", "status", "currency", "total", "as_of")
    return {"items": [{k: inv[k] for k in fields} for inv in docs if inv is not None]}


@billing.get("/v1/invoices/{month}", response_model=sc.Invoice, responses=sc.errors(404))
async def get_invoice(month: MonthPath, who: Tenant, g: State) -> dict[str, Any]:
    """An invoice with its lines (a draft shows charges so far, updated every few seconds)."""
    inv = await _invoice(g, who, month)
    lines = [{k: v for k, v in ln.items() if k != "allocations"} for ln in inv["lines"]]
    return {**{k: v for k, v in inv.items() if k not in ("lines", "tenant")}, "lines": lines}


@billing.get("/v1/invoices/{month}/lines/{line_id}", response_model=sc.LineExplanation, responses=sc.errors(404))
async def explain_line(
    month: MonthPath,
    line_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9\-_.|*:]{1,200}$")],
    who: Tenant,
    g: State,
) -> dict[str, Any]:
    """Why a line was charged: its quantity and price, and the allocations and
    workloads behind it (the largest 200)."""
    inv = await _invoice(g, who, month)
    line = next((ln for ln in inv["lines"] if ln["line_id"] == line_id), None)
    if line is None:
        raise ApiError(404, "not_found", f"invoice {inv['invoice_id']} has no line {line_id}")
    allocs = line["allocations"]
    ids = [a["allocation_id"] for a in allocs]
    found: list[Any] = await g.redis.hmget(allocations_key(who), ids) if allocs else []
    wids = [None if w is None else text(w) for w in found]
    docs = await read_docs(g.redis, [workload_key(who, w) for w in wids if w is not None])
    names = iter(docs)
    rows = [
        {
            **a,
            "gpu_hours": hours(a["gpu_seconds"]),
            "workload_id": w,
            "workload_name": (next(names) or {}).get("name") if w is not None else None,
        }
        for a, w in zip(allocs, wids, strict=True)
    ]
    total_hours, currency = hours(line["gpu_seconds"]), inv["currency"]
    how = (
        f"{total_hours} GPU-hours x {line['unit_price']} {currency}/GPU-hour = {line['amount']} {currency}"
        if line["kind"] in ("usage", "minimum", "commitment_shortfall")
        else f"{line['amount']} {currency}"
    )
    return {
        "invoice_id": inv["invoice_id"],
        "status": inv["status"],
        **{k: v for k, v in line.items() if k != "allocations"},
        "gpu_hours": total_hours,
        "computation": how,
        "allocations": rows,
    }


@billing.get("/v1/usage", response_model=sc.Usage)
async def usage(
    who: Tenant,
    g: State,
    from_month: Annotated[str | None, Query(alias="from", pattern=MONTH)] = None,
    to_month: Annotated[str | None, Query(alias="to", pattern=MONTH)] = None,
) -> dict[str, Any]:
    """GPU-hours and charges per month, SKU, region and price class (months from..to, inclusive)."""
    months = [
        m
        for m in await ranked(g.redis, invoices_key(who))
        if (from_month is None or m >= from_month) and (to_month is None or m <= to_month)
    ]
    out = []
    for inv in await read_docs(g.redis, [invoice_key(who, m) for m in months]):
        if inv is None:
            continue
        groups: dict[tuple[str, str, str], list[Decimal]] = {}
        for ln in inv["lines"]:
            if ln["kind"] not in ("usage", "minimum"):
                continue
            group = groups.setdefault((ln["sku"], ln["region"], ln["price_class"]), [Decimal(0), Decimal(0)])
            group[0] += ln["gpu_seconds"]
            group[1] += Decimal(ln["amount"])
        items = [
            {"sku": s, "region": r, "price_class": c, "gpu_hours": hours(secs), "amount": str(amount)}
            for (s, r, c), (secs, amount) in sorted(groups.items())
        ]
        out.append(
            {
                "month": inv["month"],
                "status": inv["status"],
                "as_of": inv["as_of"],
                "currency": inv["currency"],
                "items": items,
            }
        )
    return {"months": out}


@billing.get("/v1/budget", response_model=sc.Account)
async def budget(who: Tenant, g: State) -> dict[str, Any]:
    """The tenant's credit, budgets, charges this month and whether new work is admitted."""
    return account_view(who, await read_doc(g.redis, account_key(who)))


def hours(gpu_seconds: Decimal | int) -> str:
    return str((Decimal(gpu_seconds) / 3600).quantize(Decimal("0.0001")))


def account_view(tenant: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    """An account as shown: billing's last snapshot and its budget events."""
    if doc is None or "credits" not in doc:
        return {
            "tenant": tenant,
            "state": (doc or {}).get("state", "ok"),
            "note": "no charges or account settings yet",
            "alerts": (doc or {}).get("alerts", []),
        }
    credits, limit, charged = Decimal(doc["credits"]), Decimal(doc["credit_limit"]), Decimal(doc["charged"])
    available = available_credit(bool(doc.get("funded")), credits, limit, charged)
    return {
        "tenant": tenant,
        "currency": doc["currency"],
        "state": doc.get("state", "ok"),
        "cause": doc.get("cause"),
        "credits": doc["credits"],
        "credit_limit": doc["credit_limit"],
        "charged": doc["charged"],
        "available": None if available is None else str(available),
        "postpaid": available is None,
        "soft_budget": doc.get("soft_budget"),
        "hard_budget": doc.get("hard_budget"),
        "month": doc.get("month"),
        "month_charged": doc.get("month_charged"),
        "as_of": doc.get("as_of"),
        "alerts": doc.get("alerts", []),
    }


ROUTERS = [ops, billing]
