"""Tenants and their API keys (the operator's)."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from minicloud_gateway import identity
from minicloud_gateway import schemas as sc
from minicloud_gateway.deps import TEXT, IdPath, Int, Operator, State
from minicloud_gateway.guard import ApiError

router = APIRouter(tags=["operator"], responses=sc.AUTH)


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$", description="Tenant id", examples=["acme"])
    name: str = Field(min_length=1, max_length=200, pattern=TEXT, description="Name", examples=["Acme Corp"])


class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_priority: Int = Field(
        ge=0, le=1000, description="The highest priority the tenant may ask for (default 100)", examples=[500]
    )


async def known_tenant(g: State, tenant_id: str) -> None:
    if not await identity.tenant_exists(g.redis, tenant_id):
        raise ApiError(404, "not_found", f"no tenant {tenant_id}")


@router.get("/v1/tenants", response_model=sc.Tenants)
async def list_tenants(_: Operator, g: State) -> dict[str, Any]:
    """Every tenant, with its name, its keys (issued and active) and its priority ceiling."""
    return {"items": await identity.list_tenants(g.redis)}


@router.post("/v1/tenants", status_code=201, response_model=sc.TenantCreated, responses=sc.errors(409))
async def create_tenant(body: TenantIn, _: Operator, g: State) -> dict[str, Any]:
    await g.memory.check()
    if not await identity.create_tenant(g.redis, body.tenant_id, body.name):
        raise ApiError(409, "tenant_exists", f"tenant {body.tenant_id} exists")
    return {"tenant_id": body.tenant_id, "name": body.name}


@router.put("/v1/tenants/{tenant_id}/limits", response_model=sc.Limits, responses=sc.errors(404))
async def set_limits(tenant_id: IdPath, body: LimitsIn, _: Operator, g: State) -> dict[str, Any]:
    """Grant a tenant a priority ceiling other than the default (100)."""
    await known_tenant(g, tenant_id)
    await identity.set_priority_ceiling(g.redis, tenant_id, body.max_priority)
    return {"tenant_id": tenant_id, "max_priority": body.max_priority}


@router.get("/v1/tenants/{tenant_id}/keys", response_model=sc.Keys, responses=sc.errors(404))
async def list_keys(tenant_id: IdPath, _: Operator, g: State) -> dict[str, Any]:
    """A tenant's keys: id, when issued, last used (to the minute) and revoked."""
    await known_tenant(g, tenant_id)
    return {"items": await identity.list_keys(g.redis, tenant_id)}


@router.post("/v1/tenants/{tenant_id}/keys", status_code=201, response_model=sc.KeyIssued, responses=sc.errors(404))
async def issue_key(tenant_id: IdPath, _: Operator, g: State) -> dict[str, Any]:
    await known_tenant(g, tenant_id)
    await g.memory.check()
    key_id, key = await identity.issue_key(g.redis, tenant_id)
    return {"key_id": key_id, "key": key, "note": "shown once: store it now"}


@router.delete(
    "/v1/tenants/{tenant_id}/keys/{key_id}", status_code=204, response_class=Response, responses=sc.errors(404)
)
async def revoke_key(tenant_id: IdPath, key_id: IdPath, _: Operator, g: State) -> Response:
    if not await identity.revoke_key(g.redis, tenant_id, key_id):
        raise ApiError(404, "not_found", f"tenant {tenant_id} has no key {key_id}")
    return Response(status_code=204)


ROUTERS = [router]
