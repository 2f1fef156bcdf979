"""Reserved capacity: granted by the operator, listed to each tenant (its own)."""

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from minicloud_gateway import schemas as sc
from minicloud_gateway.commands import command
from minicloud_gateway.deps import ID, AnyCaller, IdemKey, Int, Operator, State
from minicloud_gateway.guard import ApiError
from minicloud_gateway.routes.tenants import known_tenant
from minicloud_gateway.store import RESERVATION_TENANTS, members, read_docs, reservations_key
from minicloud_shared.contracts.scheduling import GrantReservation
from minicloud_shared.skus import skus

ops = APIRouter(tags=["operator"], responses=sc.AUTH)
shared = APIRouter(tags=["workloads"], responses=sc.AUTH)  # operator and tenants, each seeing what is theirs


class ReservationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reservation_id: str = Field(pattern=ID, max_length=63, examples=["acme-h100-2026q4"])
    tenant_id: str = Field(pattern=ID, max_length=63, examples=["acme"])
    sku: str = Field(pattern=ID, max_length=63, examples=["h100-80gb-sxm"])
    region: str = Field(pattern=ID, max_length=63, examples=["eu-1"])
    gpus: Int = Field(ge=1, le=100_000, examples=[16])
    starts_at: AwareDatetime = Field(examples=["2026-12-01T00:00:00Z"])
    ends_at: AwareDatetime = Field(examples=["2027-12-01T00:00:00Z"])


@ops.post("/v1/reservations", status_code=202, response_model=sc.Operation, responses=sc.errors(404, 409))
async def grant_reservation(
    body: ReservationIn, _: Operator, g: State, idempotency_key: IdemKey = None
) -> JSONResponse:
    """Grant a tenant reserved capacity: GPUs of a SKU in a region for a term. Its work
    submitted as ``reserved`` runs within it at the reserved price, ahead of on-demand work."""
    await known_tenant(g, body.tenant_id)
    if body.sku not in skus():
        raise ApiError(422, "unknown_sku", f"no GPU SKU {body.sku!r}: see /v1/skus")
    if body.ends_at <= body.starts_at or body.ends_at <= g.clock.now():
        raise ApiError(422, "bad_term", "a reservation ends after it starts, and in the future")
    return await command(
        g,
        GrantReservation(**body.model_dump(exclude={"tenant_id"})),
        f"reserve {body.gpus} x {body.sku} in {body.region} for {body.tenant_id}",
        idempotency_key,
        f"{body.tenant_id}/{body.reservation_id}",
        body.tenant_id,
    )


@shared.get("/v1/reservations", response_model=sc.Reservations)
async def list_reservations(who: AnyCaller, g: State) -> dict[str, Any]:
    """Reservations: a tenant's own, or every tenant's for the operator."""
    tenants = [who.tenant] if who.tenant is not None else await members(g.redis, RESERVATION_TENANTS)
    docs = await read_docs(g.redis, [reservations_key(t) for t in tenants])
    rows = [r for d in docs if d is not None for r in d["items"].values()]
    now = g.clock.now()
    for r in rows:
        r["in_force"] = datetime.fromisoformat(r["starts_at"]) <= now < datetime.fromisoformat(r["ends_at"])
    return {"items": sorted(rows, key=lambda r: (r["tenant"], r["reservation_id"]))}


ROUTERS = [ops, shared]
