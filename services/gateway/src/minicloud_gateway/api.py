"""The public API (``/v1``): the only HTTP surface of the cloud.

Writes become commands on the owning service's command stream; reads come from the
gateway's projections. Errors are JSON ``{"error": {"code", "message"}}`` with a stable
code. Another tenant's object answers exactly like a missing one (404). Request bodies
are size-limited and refuse unknown fields.

This module serves identity (tenants, keys), prices and quotes, workloads (submit with
an ``Idempotency-Key``, get, list, complete, cancel) and health; ``fleet`` adds hosts,
capacity, availability, catalog versions, accounts, usage, invoices and budgets.

No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations
at definition time, and they name dependencies local to ``create_app``.
"""

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from minicloud_gateway import fleet, identity
from minicloud_gateway.identity import Caller
from minicloud_gateway.projections import (
    CATALOG,
    create_doc,
    read_doc,
    read_docs,
    same_request,
    workload_key,
    workloads_key,
)
from minicloud_shared.clock import Clock, SystemClock
from minicloud_shared.contracts import derived_event_id, text
from minicloud_shared.contracts.scheduling import (
    CancelWorkload,
    CompleteWorkload,
    PriceClass,
    SubmitWorkload,
    WorkloadKind,
)
from minicloud_shared.contracts.topology import groups_of
from minicloud_shared.pricing import Catalog, CatalogVersion, Unpriced, base_catalog, quote
from minicloud_shared.runtime import Health, publish
from minicloud_shared.skus import skus

MAX_BODY_BYTES = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantIn(_Body):
    tenant_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$", description="Tenant id", examples=["acme"])
    name: str = Field(min_length=1, max_length=200, description="Name", examples=["Acme Corp"])


class WorkloadIn(_Body):
    name: str = Field(min_length=1, max_length=100, examples=["llama-ft-7b"])
    kind: WorkloadKind = Field(examples=["fine_tuning"])
    sku: str | None = Field(None, examples=["h100-80gb-sxm"])
    gpus_per_node: int = Field(ge=1, le=72, examples=[8])
    nodes: int = Field(1, ge=1, le=1024, examples=[2])
    region: str | None = Field(None, examples=["eu-1"])
    price_class: PriceClass = Field("on_demand", examples=["on_demand"])
    priority: int = Field(100, ge=0, le=1000, examples=[100])
    max_duration_s: int = Field(86_400, ge=60, le=90 * 86_400, examples=[3600])


def create_app(
    redis: Redis, health: Health, rate_per_s: int = 50, clock: Clock | None = None, max_lag: int = 1000
) -> FastAPI:
    """The API on ``redis``; each key may make ``rate_per_s`` requests a second (429
    beyond); commands and "now" follow ``clock`` (the cloud's, accelerated in the demo);
    ready while no projection is more than ``max_lag`` entries behind."""
    clock = clock or SystemClock()
    app = FastAPI(
        title="minicloud public API",
        version="1",
        description="A minimal public GPU cloud: workloads on GPUs, metered per second, billed from a price list.",
    )

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, "invalid_request", f"{where or 'body'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, "body_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    async def caller(authorization: Annotated[str | None, Header()] = None) -> Caller:
        found = await identity.authenticate(redis, authorization)
        if found is not None:
            await _rate_limit(found)
        if found is None:
            raise ApiError(
                401,
                "unauthenticated",
                "a valid API key is required: Authorization: Bearer mck_...",
                {"WWW-Authenticate": "Bearer"},
            )
        return found

    async def _rate_limit(c: Caller) -> None:
        """A fixed one-second window per key, counted in Redis (shared by gateway replicas)."""
        now = time.time()
        window = f"mc:gateway:rate:{c.key_id}:{int(now)}"
        pipe = redis.pipeline(transaction=False)
        pipe.incr(window)
        pipe.expire(window, 2)
        count, _ = await pipe.execute()
        if int(count) > rate_per_s:
            retry = max(1, int(-(-(int(now) + 1 - now) // 1)))
            raise ApiError(
                429,
                "rate_limited",
                f"more than {rate_per_s} requests a second with this key",
                {"Retry-After": str(retry)},
            )

    async def operator(c: Annotated[Caller, Depends(caller)]) -> Caller:
        if c.role != "operator":
            raise ApiError(403, "forbidden", "this needs the operator's key")
        return c

    async def tenant(c: Annotated[Caller, Depends(caller)]) -> str:
        if c.tenant is None:
            raise ApiError(403, "forbidden", "this needs a tenant's key")
        return c.tenant

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"service": "gateway", "up": True}

    @app.get("/readyz", tags=["health"], response_model=None)
    async def readyz() -> JSONResponse:
        """Ready: Redis reachable, groups present, the epoch unchanged, and the
        projections caught up (at most ``max_lag`` entries of any stream unread), so a
        gateway that restarted behind a backlog takes no reads until it has caught up."""
        doc: dict[str, Any] = {"service": "gateway", **health.as_dict()}
        lags: dict[str, int | None] = {}
        if health.ready:
            try:
                for g in groups_of("gateway"):
                    found: Any = await redis.xinfo_groups(g.stream)
                    mine = next((x for x in found if text(x.get("name")) == g.group), None)
                    lags[g.stream] = None if mine is None or mine.get("lag") is None else int(mine["lag"])
            except RedisError as exc:
                doc.update(ready=False, reasons=[f"redis: {exc}"])
            behind = [f"{s} has {n} unread entries" for s, n in lags.items() if n is None or n > max_lag]
            if behind and doc["ready"]:
                doc.update(ready=False, reasons=["projections catching up: " + "; ".join(behind)])
        doc["projection_lag"] = lags
        return JSONResponse(doc, status_code=200 if doc["ready"] else 503)

    @app.get("/v1/tenants", tags=["operator"])
    async def list_tenants(_: Annotated[Caller, Depends(operator)]) -> dict[str, Any]:
        """Every tenant, with its name and how many keys it was issued."""
        return {"items": await identity.list_tenants(redis)}

    @app.post("/v1/tenants", status_code=201, tags=["operator"])
    async def create_tenant(body: TenantIn, _: Annotated[Caller, Depends(operator)]) -> dict[str, Any]:
        if not await identity.create_tenant(redis, body.tenant_id, body.name):
            raise ApiError(409, "tenant_exists", f"tenant {body.tenant_id} exists")
        return {"tenant_id": body.tenant_id, "name": body.name}

    @app.post("/v1/tenants/{tenant_id}/keys", status_code=201, tags=["operator"])
    async def issue_key(tenant_id: str, _: Annotated[Caller, Depends(operator)]) -> dict[str, Any]:
        if not await identity.tenant_exists(redis, tenant_id):
            raise ApiError(404, "not_found", f"no tenant {tenant_id}")
        key_id, key = await identity.issue_key(redis, tenant_id)
        return {"key_id": key_id, "key": key, "note": "shown once: store it now"}

    @app.delete("/v1/tenants/{tenant_id}/keys/{key_id}", status_code=204, tags=["operator"])
    async def revoke_key(tenant_id: str, key_id: str, _: Annotated[Caller, Depends(operator)]) -> Response:
        if not await identity.revoke_key(redis, tenant_id, key_id):
            raise ApiError(404, "not_found", f"tenant {tenant_id} has no key {key_id}")
        return Response(status_code=204)

    @app.post("/v1/workloads", status_code=202, tags=["workloads"])
    async def submit(
        body: WorkloadIn,
        who: Annotated[str, Depends(tenant)],
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128)] = None,
    ) -> JSONResponse:
        if idempotency_key is None:
            raise ApiError(400, "idempotency_key_required", "send an Idempotency-Key header: a retry with it is safe")
        workload_id = "wl-" + derived_event_id(who, "workload", idempotency_key)[:23]
        if not await same_request(redis, who, idempotency_key, body.model_dump(mode="json")):
            raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different body")
        command = SubmitWorkload(workload_id=workload_id, client_command_id=idempotency_key, **body.model_dump())
        submitted = {"workload_id": workload_id, "status": "submitted", **body.model_dump(mode="json")}
        # Readable at once: created as "submitted" unless the events got there first; the
        # projection's handlers take it from there (their version check sees this write).
        await create_doc(
            redis, workload_key(who, workload_id), submitted, (workloads_key(who), workload_id, time.time())
        )
        # The command's id is a function of the tenant and the key: a retry publishes
        # the same command, which scheduling applies once.
        await publish(
            redis,
            command,
            producer="gateway",
            tenant_id=who,
            event_id=derived_event_id(who, "submit", idempotency_key),
            clock=clock,
        )
        return JSONResponse(
            {"workload_id": workload_id, "status": "submitted"},
            status_code=202,
            headers={"Location": f"/v1/workloads/{workload_id}"},
        )

    async def _catalog() -> Catalog:
        doc = await read_doc(redis, CATALOG) or {"versions": []}
        published = [CatalogVersion.from_doc(v) for v in doc["versions"]]
        return Catalog([base_catalog(), *published])

    @app.get("/v1/skus", tags=["public"])
    async def list_skus() -> dict[str, Any]:
        """The GPU models the cloud rents (public)."""
        return {"items": [s.model_dump(mode="json") for s in skus().values()]}

    @app.get("/v1/prices", tags=["public"])
    async def prices() -> dict[str, Any]:
        """The price list in force now, per GPU-hour, and versions announced for later (public)."""
        catalog = await _catalog()
        now = clock.now()
        current = catalog.in_force(now)

        def rows(v: CatalogVersion) -> list[dict[str, str]]:
            return [
                {"sku": s, "region": r, "price_class": c, "per_gpu_hour": str(p)}
                for (s, r, c), p in sorted(v.prices.items())
            ]

        upcoming = [v for v in catalog.versions if v.effective_at > now]
        return {
            "currency": current.currency,
            "version": current.version,
            "effective_at": current.effective_at.isoformat(),
            "prices": rows(current),
            "upcoming": [
                {"version": v.version, "effective_at": v.effective_at.isoformat(), "prices": rows(v)} for v in upcoming
            ],
        }

    @app.get("/v1/quote", tags=["workloads"])
    async def get_quote(
        who: Annotated[str, Depends(tenant)],
        sku: str,
        gpus: Annotated[int, Query(ge=1, le=100_000)],
        hours: Annotated[float, Query(gt=0, le=24 * 365)],
        price_class: Literal["on_demand", "spot", "reserved"] = "on_demand",
        region: str = "*",
    ) -> dict[str, Any]:
        """The price of ``gpus`` GPUs for ``hours``, starting now, with the catalog versions used."""
        try:
            return quote(
                await _catalog(),
                sku=sku,
                gpus=gpus,
                duration_s=int(hours * 3600),
                price_class=price_class,
                region=region,
                start=clock.now(),
            )
        except Unpriced as exc:
            raise ApiError(404, "not_priced", str(exc)) from None

    async def _workload(who: str, workload_id: str) -> dict[str, Any]:
        doc = await read_doc(redis, workload_key(who, workload_id))
        if doc is None:
            raise ApiError(404, "not_found", f"no workload {workload_id}")
        return doc

    @app.get("/v1/workloads/{workload_id}", tags=["workloads"])
    async def get_workload(workload_id: str, who: Annotated[str, Depends(tenant)]) -> dict[str, Any]:
        return await _workload(who, workload_id)

    @app.get("/v1/workloads", tags=["workloads"])
    async def list_workloads(
        who: Annotated[str, Depends(tenant)], limit: int = 50, after: str | None = None
    ) -> dict[str, Any]:
        limit = max(1, min(limit, 200))
        index = workloads_key(who)
        rank: Any = await redis.zrank(index, after) if after else None
        start = 0 if rank is None else int(rank) + 1
        # One page of ids (one more, to know whether there is a next page), then their
        # documents in one round trip.
        ids: list[Any] = await redis.zrange(index, start, start + limit)
        names = [text(i) for i in ids]
        page, more = names[:limit], len(names) > limit
        items = [d for d in await read_docs(redis, [workload_key(who, w) for w in page]) if d is not None]
        return {"items": items, "next": page[-1] if more and page else None}

    async def _end(command: Any, who: str, workload_id: str) -> JSONResponse:
        await _workload(who, workload_id)  # 404 for unknown and other tenants' workloads alike
        await publish(redis, command, producer="gateway", tenant_id=who, clock=clock)
        return JSONResponse({"workload_id": workload_id, "status": "requested"}, status_code=202)

    @app.post("/v1/workloads/{workload_id}/complete", status_code=202, tags=["workloads"])
    async def complete(workload_id: str, who: Annotated[str, Depends(tenant)]) -> JSONResponse:
        return await _end(CompleteWorkload(workload_id=workload_id), who, workload_id)

    @app.post("/v1/workloads/{workload_id}/cancel", status_code=202, tags=["workloads"])
    async def cancel(workload_id: str, who: Annotated[str, Depends(tenant)]) -> JSONResponse:
        return await _end(CancelWorkload(workload_id=workload_id), who, workload_id)

    fleet.add_routes(app, redis, clock, caller, operator, tenant, ApiError)
    return app
