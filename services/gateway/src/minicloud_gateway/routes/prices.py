"""What the cloud rents and at what price: SKUs, the price list and its versions, quotes."""

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from minicloud_gateway import schemas as sc
from minicloud_gateway.commands import command
from minicloud_gateway.deps import ID, IdemKey, Operator, State, Tenant, anonymous
from minicloud_gateway.guard import ApiError
from minicloud_gateway.store import CATALOG, read_doc
from minicloud_shared.contracts.billing import PriceRow, PublishPriceCatalog
from minicloud_shared.pricing import (
    RESOURCE_ITEMS,
    Catalog,
    CatalogVersion,
    Unpriced,
    base_catalog,
    catalog_of,
    quote,
)
from minicloud_shared.skus import skus

public = APIRouter(tags=["public"], dependencies=[Depends(anonymous)])
quotes = APIRouter(tags=["workloads"], responses=sc.AUTH)
ops = APIRouter(tags=["operator"], responses=sc.AUTH)
OP_ON_TARGET: dict[str, Any] = {"response_model": sc.Operation, "responses": sc.errors(404, 409)}


class PriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: str = Field(pattern=ID, max_length=63, examples=["h100-80gb-sxm"])
    region: str = Field("*", pattern=r"^\*$|" + ID, max_length=63, examples=["*"])
    price_class: str = Field(pattern=r"^(on_demand|spot|reserved)$", examples=["on_demand"])
    per_gpu_hour: Decimal = Field(ge=0, le=10_000, decimal_places=6, examples=["2.39"])


class CatalogIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(pattern=r"^[A-Za-z0-9\-_.]{1,32}$", examples=["2026-12"])
    effective_at: AwareDatetime = Field(examples=["2026-12-01T00:00:00Z"], description="With its UTC offset")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", examples=["USD"])
    prices: list[PriceIn] = Field(min_length=1, max_length=10_000)


async def catalog(g: State) -> Catalog:
    """The base catalog and every version billing published after it."""
    return catalog_of(await read_doc(g.redis, CATALOG))


@public.get("/v1/skus", response_model=sc.Skus)
async def list_skus() -> dict[str, Any]:
    """The GPU models the cloud rents (public)."""
    return {"items": [s.model_dump(mode="json") for s in skus().values()]}


def _rows(v: CatalogVersion) -> list[dict[str, str]]:
    return [
        {"sku": s, "region": r, "price_class": c, "per_gpu_hour": str(p)} for (s, r, c), p in sorted(v.prices.items())
    ]


@public.get("/v1/prices", response_model=sc.PriceList)
async def prices(g: State) -> dict[str, Any]:
    """The price list in force now, per GPU-hour (the rows cpu and memory: per vCPU-hour and per
    GiB-hour, for CPU-only work; a GPU share costs its SKU's price x the share), and
    versions announced for later (public)."""
    found = await catalog(g)
    now = g.clock.now()
    current = found.in_force(now)
    upcoming = [v for v in found.versions if v.effective_at > now]
    return {
        "currency": current.currency,
        "version": current.version,
        "effective_at": current.effective_at.isoformat(),
        "prices": _rows(current),
        "upcoming": [
            {"version": v.version, "effective_at": v.effective_at.isoformat(), "prices": _rows(v)} for v in upcoming
        ],
    }


@quotes.get("/v1/quote", response_model=sc.Quote, responses=sc.errors(404))
async def get_quote(
    _: Tenant,
    g: State,
    sku: Annotated[str, Query(pattern=ID, max_length=63)],
    gpus: Annotated[int, Query(ge=1, le=100_000)],
    hours: Annotated[float, Query(gt=0, le=24 * 365)],
    price_class: Literal["on_demand", "spot", "reserved"] = "on_demand",
    region: Annotated[str, Query(pattern=r"^\*$|" + ID, max_length=63)] = "*",
) -> dict[str, Any]:
    """The price of ``gpus`` GPUs for ``hours``, starting now, with the catalog versions used."""
    try:
        return quote(
            await catalog(g),
            sku=sku,
            gpus=gpus,
            duration_s=int(hours * 3600),
            price_class=price_class,
            region=region,
            start=g.clock.now(),
        )
    except Unpriced as exc:
        raise ApiError(404, "not_priced", str(exc)) from None


@ops.post("/v1/prices/versions", status_code=202, **OP_ON_TARGET)
async def publish_catalog(body: CatalogIn, _: Operator, g: State, idempotency_key: IdemKey = None) -> JSONResponse:
    """Announce a catalog version: it lists what changes, from ``effective_at`` (in the future)."""
    unknown = sorted({p.sku for p in body.prices} - set(skus()) - set(RESOURCE_ITEMS))
    if unknown:
        raise ApiError(422, "unknown_sku", f"no SKU {', '.join(unknown)}: see /v1/skus (and the rows cpu and memory)")
    cmd = PublishPriceCatalog(
        version=body.version,
        effective_at=body.effective_at,
        currency=body.currency,
        prices=[PriceRow.model_validate(p.model_dump(mode="json"), strict=False) for p in body.prices],
    )
    return await command(g, cmd, f"publish catalog {body.version}", idempotency_key, body.version)


@public.get("/v1/prices/versions", response_model=sc.CatalogVersions)
async def catalog_versions(g: State) -> dict[str, Any]:
    """Every catalog version, oldest first: the base list and those published after it (public)."""
    base = base_catalog()
    doc = await read_doc(g.redis, CATALOG) or {"versions": []}
    items = [{"version": base.version, "effective_at": base.effective_at.isoformat(), "currency": base.currency}]
    items += [{k: v[k] for k in ("version", "effective_at", "currency")} for v in doc["versions"]]
    return {"items": items}


ROUTERS = [public, quotes, ops]
