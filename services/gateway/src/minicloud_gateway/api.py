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

import json
import time
from datetime import datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, Strict
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, OutOfMemoryError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from minicloud_gateway import fleet, identity
from minicloud_gateway import schemas as sc
from minicloud_gateway.admission import FleetShapes
from minicloud_gateway.guard import ApiError, BodyLimit, MemoryGuard, client_address, over, rate_limited
from minicloud_gateway.identity import Caller
from minicloud_gateway.projections import (
    CATALOG,
    account_key,
    read_doc,
    read_docs,
    request_digest,
    reservations_key,
    workload_key,
    workloads_key,
)
from minicloud_shared.clock import Clock, SystemClock
from minicloud_shared.contracts import derived_event_id, encode, envelope_for, text
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
log = structlog.get_logger(service="gateway")
__all__ = ["ApiError", "create_app"]

# What a string of a request may hold. Ids are lower-case names; free text (names,
# reasons) has no control characters (terminal escapes, NUL) and no bidirectional
# overrides, so what the CLI prints is what was typed.
ID = r"^[a-z0-9][a-z0-9\-_.]{0,62}$"
TEXT = r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*$"
Int = Annotated[int, Strict()]  # JSON true is not 1
IdPath = Annotated[str, Path(pattern=ID, max_length=63)]


# A submission's one write: the workload's document created at version 1 (unless it
# exists: then it is returned for the caller to compare), listed in the tenant's index,
# and the command appended to scheduling's stream — all or nothing, so a command is never
# published for a body the document does not hold. Returns {created, document}.
# The stream is an argument, not a declared key, as in the runtime's commit script: Redis
# checks a script's declared keys against one permission set, and the gateway's own keys
# and the command stream are in two (its own keys, and the selector that allows XADD
# there); the XADD inside is checked against the latter.
SUBMIT_LUA = """
local d = redis.call('HGET', KEYS[1], 'd')
if d then return {0, d} end
redis.call('HSET', KEYS[1], 'v', 1, 'd', ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
redis.call('XADD', ARGV[4], '*', unpack(ARGV, 5))
return {1, ARGV[1]}
"""


def _flat(fields: dict[str, str]) -> list[str]:
    return [x for kv in fields.items() for x in kv]


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantIn(_Body):
    tenant_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$", description="Tenant id", examples=["acme"])
    name: str = Field(min_length=1, max_length=200, pattern=TEXT, description="Name", examples=["Acme Corp"])


class LimitsIn(_Body):
    max_priority: Int = Field(
        ge=0, le=1000, description="The highest priority the tenant may ask for (default 100)", examples=[500]
    )


class WorkloadIn(_Body):
    name: str = Field(min_length=1, max_length=100, pattern=TEXT, examples=["llama-ft-7b"])
    kind: WorkloadKind = Field(examples=["fine_tuning"])
    sku: str | None = Field(None, pattern=ID, max_length=63, examples=["h100-80gb-sxm"])
    gpus_per_node: Int = Field(ge=1, le=72, examples=[8])
    nodes: Int = Field(1, ge=1, le=1024, examples=[2])
    region: str | None = Field(None, pattern=ID, max_length=63, examples=["eu-1"])
    price_class: PriceClass = Field("on_demand", examples=["on_demand"])
    priority: Int = Field(100, ge=0, le=1000, examples=[100])
    max_duration_s: Int = Field(86_400, ge=60, le=90 * 86_400, examples=[3600])


def create_app(
    redis: Redis,
    health: Health,
    rate_per_s: int = 50,
    clock: Clock | None = None,
    max_lag: int = 1000,
    anonymous_rate_per_s: int = 20,
    memory_fraction: float = 0.8,
    memory_every_s: float = 1.0,
) -> FastAPI:
    """The API on ``redis``; each key may make ``rate_per_s`` requests a second, and each
    client address ``anonymous_rate_per_s`` without a valid key (429 beyond); new work
    is refused (503) while Redis uses more than ``memory_fraction`` of its maxmemory;
    commands and "now" follow ``clock`` (the cloud's, accelerated in the demo); ready
    while no projection is more than ``max_lag`` entries behind."""
    clock = clock or SystemClock()
    memory = MemoryGuard(redis, memory_fraction, memory_every_s)
    _submit_script = redis.register_script(SUBMIT_LUA)
    bearer = HTTPBearer(auto_error=False, description="An API key: Authorization: Bearer mck_<id>_<secret>")
    shapes = FleetShapes(redis)
    app = FastAPI(
        title="minicloud public API",
        version="1",
        responses=sc.EVERY,
        description="A minimal public GPU cloud: workloads on GPUs, metered per second, billed from a price list.",
    )

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            at = first.get("loc", ("body", 0))[-1]
            return _error(422, "invalid_request", f"the body is not valid JSON (at character {at})")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, "invalid_request", f"{where or 'body'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Every method of the path (Starlette names only the first route's).
            partial = [r for r in app.routes if r.matches(request.scope)[0] == Match.PARTIAL]
            allowed = {m for r in partial for m in getattr(r, "methods", None) or ()}
            headers["Allow"] = ", ".join(sorted(allowed - {"HEAD"}))
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers)

    @app.exception_handler(OutOfMemoryError)
    async def redis_full(_: Request, exc: OutOfMemoryError) -> JSONResponse:
        message = "the cloud's storage is full: new work is refused, try again later"
        return _error(503, "storage_full", message, {"Retry-After": "30"})

    @app.exception_handler(RedisError)
    async def redis_error(request: Request, exc: RedisError) -> JSONResponse:
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | BusyLoadingError):
            # Redis restarting, unreachable or loading: nothing was decided, a retry is safe.
            message = "the cloud's store is not reachable: retry shortly"
            return _error(503, "unavailable", message, {"Retry-After": "2"})
        return await internal(request, exc)  # a refused command (ACL, script): a fault of ours

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", method=request.method, route=request.url.path, exc_info=exc)
        return _error(500, "internal", "the gateway failed on this request; it is logged")

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    async def anonymous(request: Request) -> None:
        """A request without a valid key counts against its client address."""
        await rate_limited(redis, "addr:" + client_address(request.scope), anonymous_rate_per_s)

    async def caller(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Caller:
        header = f"Bearer {credentials.credentials}" if credentials is not None else None
        found = await identity.authenticate(redis, header)  # and the key's request counted
        if found.caller is None:
            await anonymous(request)  # guessing keys is rate-limited like anonymous use
            raise ApiError(
                401,
                "unauthenticated",
                "a valid API key is required: Authorization: Bearer mck_...",
                {"WWW-Authenticate": "Bearer"},
            )
        over(found.requests_this_second, rate_per_s, "key")
        return found.caller

    async def operator(c: Annotated[Caller, Depends(caller)]) -> Caller:
        if c.role != "operator":
            raise ApiError(403, "forbidden", "this needs the operator's key")
        return c

    async def tenant(c: Annotated[Caller, Depends(caller)]) -> str:
        if c.tenant is None:
            raise ApiError(403, "forbidden", "this needs a tenant's key")
        return c.tenant

    @app.get("/healthz", tags=["health"], response_model=sc.Alive)
    async def healthz() -> dict[str, Any]:
        return {"service": "gateway", "up": True}

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=sc.Readiness,
        responses={503: {"model": sc.Readiness, "description": "Not ready: the reasons say why"}},
    )
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

    @app.get("/v1/tenants", tags=["operator"], response_model=sc.Tenants, responses=sc.AUTH)
    async def list_tenants(_: Annotated[Caller, Depends(operator)]) -> dict[str, Any]:
        """Every tenant, with its name, its keys (issued and active) and its priority ceiling."""
        return {"items": await identity.list_tenants(redis)}

    @app.post(
        "/v1/tenants",
        status_code=201,
        tags=["operator"],
        response_model=sc.TenantCreated,
        responses={**sc.AUTH, **sc.errors(409)},
    )
    async def create_tenant(body: TenantIn, _: Annotated[Caller, Depends(operator)]) -> dict[str, Any]:
        await memory.check()
        if not await identity.create_tenant(redis, body.tenant_id, body.name):
            raise ApiError(409, "tenant_exists", f"tenant {body.tenant_id} exists")
        return {"tenant_id": body.tenant_id, "name": body.name}

    @app.put(
        "/v1/tenants/{tenant_id}/limits",
        tags=["operator"],
        response_model=sc.Limits,
        responses={**sc.AUTH, **sc.errors(404)},
    )
    async def set_limits(tenant_id: IdPath, body: LimitsIn, _: Annotated[Caller, Depends(operator)]) -> dict[str, Any]:
        """Grant a tenant a priority ceiling other than the default (100)."""
        if not await identity.tenant_exists(redis, tenant_id):
            raise ApiError(404, "not_found", f"no tenant {tenant_id}")
        await identity.set_priority_ceiling(redis, tenant_id, body.max_priority)
        return {"tenant_id": tenant_id, "max_priority": body.max_priority}

    @app.get(
        "/v1/tenants/{tenant_id}/keys",
        tags=["operator"],
        response_model=sc.Keys,
        responses={**sc.AUTH, **sc.errors(404)},
    )
    async def list_keys(tenant_id: IdPath, _: Annotated[Caller, Depends(operator)]) -> dict[str, Any]:
        """A tenant's keys: id, when issued, last used (to the minute) and revoked."""
        if not await identity.tenant_exists(redis, tenant_id):
            raise ApiError(404, "not_found", f"no tenant {tenant_id}")
        return {"items": await identity.list_keys(redis, tenant_id)}

    @app.post(
        "/v1/tenants/{tenant_id}/keys",
        status_code=201,
        tags=["operator"],
        response_model=sc.KeyIssued,
        responses={**sc.AUTH, **sc.errors(404)},
    )
    async def issue_key(tenant_id: IdPath, _: Annotated[Caller, Depends(operator)]) -> dict[str, Any]:
        if not await identity.tenant_exists(redis, tenant_id):
            raise ApiError(404, "not_found", f"no tenant {tenant_id}")
        await memory.check()
        key_id, key = await identity.issue_key(redis, tenant_id)
        return {"key_id": key_id, "key": key, "note": "shown once: store it now"}

    @app.delete(
        "/v1/tenants/{tenant_id}/keys/{key_id}",
        status_code=204,
        tags=["operator"],
        response_class=Response,
        responses={**sc.AUTH, **sc.errors(404)},
    )
    async def revoke_key(tenant_id: IdPath, key_id: IdPath, _: Annotated[Caller, Depends(operator)]) -> Response:
        if not await identity.revoke_key(redis, tenant_id, key_id):
            raise ApiError(404, "not_found", f"tenant {tenant_id} has no key {key_id}")
        return Response(status_code=204)

    @app.post(
        "/v1/workloads",
        status_code=202,
        tags=["workloads"],
        response_model=sc.Accepted,
        responses={**sc.AUTH, **sc.errors(402, 409)},
    )
    async def submit(
        body: WorkloadIn,
        who: Annotated[str, Depends(tenant)],
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128, pattern=TEXT)] = None,
    ) -> JSONResponse:
        """Submit a workload. The Idempotency-Key names it for good: the same key with the
        same body answers with the same workload (whatever became of it), with another
        body 409. Nothing is stored for a refused submission."""
        if idempotency_key is None:
            raise ApiError(400, "idempotency_key_required", "send an Idempotency-Key header: a retry with it is safe")
        workload_id = "wl-" + derived_event_id(who, "workload", idempotency_key)[:23]
        spec = body.model_dump(mode="json")
        digest = request_digest(spec)
        key = workload_key(who, workload_id)
        command = SubmitWorkload(workload_id=workload_id, client_command_id=idempotency_key, **body.model_dump())
        envelope = envelope_for(
            command,
            producer="gateway",
            occurred_at=clock.now(),
            event_id=derived_event_id(who, "submit", idempotency_key),  # a retry is the same command
            tenant_id=who,
        )
        # One round trip for what admission reads, one for the write.
        pipe = redis.pipeline(transaction=False)
        for k, field in ((key, "d"), (account_key(who), "d"), (identity.tenant_key(who), "max_priority")):
            pipe.hget(k, field)
        pipe.hget(reservations_key(who), "d")
        found, account, ceiling, reserved = await pipe.execute()
        existing = None if found is None else json.loads(found)
        if existing is None:
            # Admission, before anything is stored: room in Redis, the tenant's budget and
            # priority ceiling and reservations, and a fleet that can hold the workload.
            await memory.check()
            _admit(body, account, ceiling, reserved)
            await shapes.check(body.sku, body.region, body.gpus_per_node, body.nodes)
            submitted = {"workload_id": workload_id, "status": "submitted", **spec, "request_digest": digest}
            # Created as "submitted" and the command appended in one atomic step; the
            # projection's handlers take the document from there.
            created, existing = await submit_once(
                keys=[key, workloads_key(who)],
                args=[
                    json.dumps(submitted),
                    time.time(),
                    workload_id,
                    command.stream,
                    *_flat(encode(envelope, command)),
                ],
            )
            if created:
                return _accepted(workload_id)
        if existing.get("request_digest", digest) != digest:
            raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different body")
        if existing.get("status") == "submitted":
            # A retry of a submission not yet accepted: the same command again (its id is a
            # function of the tenant and the key, so scheduling applies it once).
            await redis.xadd(command.stream, encode(envelope, command))  # type: ignore[arg-type]
        return _accepted(workload_id)

    def _accepted(workload_id: str) -> JSONResponse:
        return JSONResponse(
            {"workload_id": workload_id, "status": "submitted"},
            status_code=202,
            headers={"Location": f"/v1/workloads/{workload_id}"},
        )

    async def submit_once(keys: list[str], args: list[Any]) -> tuple[bool, dict[str, Any]]:
        created, doc = await _submit_script(keys=keys, args=args)
        return bool(created), json.loads(doc)

    def _admit(body: WorkloadIn, account: Any, ceiling: Any, reserved: Any) -> None:
        """The tenant's side of admission, from the gateway's own records: a tenant its
        budget blocks is refused here (scheduling refuses it too, if this view lags)."""
        acct = None if account is None else json.loads(account)
        if acct is not None and acct.get("state") == "blocked":
            why = acct.get("cause") or "the budget is exhausted"
            raise ApiError(402, "budget", f"no new work is admitted: {why}")
        limit = identity.DEFAULT_MAX_PRIORITY if ceiling is None else int(ceiling)
        if body.priority > limit:
            raise ApiError(
                403, "priority_not_granted", f"priority {body.priority} is above this tenant's ceiling of {limit}"
            )
        if body.price_class == "reserved":
            _reservation_for(body, {"items": {}} if reserved is None else json.loads(reserved))

    def _reservation_for(body: WorkloadIn, doc: dict[str, Any]) -> None:
        """Reserved work needs a reservation in force that can hold it: an operator's grant
        for its SKU and region (scheduling keeps it within the reservation's GPUs)."""
        if body.sku is None or body.region is None:
            raise ApiError(422, "reservation_needs_place", "reserved work names the SKU and region of its reservation")
        now = clock.now()
        fits = [
            r
            for r in doc["items"].values()
            if (r["sku"], r["region"]) == (body.sku, body.region)
            and datetime.fromisoformat(r["starts_at"]) <= now < datetime.fromisoformat(r["ends_at"])
        ]
        reserved = sum(int(r["gpus"]) for r in fits)
        if reserved < body.gpus_per_node * body.nodes:
            held = f"holds {reserved} reserved GPUs" if reserved else "holds no reservation in force"
            raise ApiError(
                403,
                "no_reservation",
                f"price class reserved needs an operator's reservation: this tenant {held} of "
                f"{body.sku} in {body.region}; submit it as on_demand or spot",
            )

    async def _catalog() -> Catalog:
        doc = await read_doc(redis, CATALOG) or {"versions": []}
        published = [CatalogVersion.from_doc(v) for v in doc["versions"]]
        return Catalog([base_catalog(), *published])

    @app.get("/v1/skus", tags=["public"], dependencies=[Depends(anonymous)], response_model=sc.Skus)
    async def list_skus() -> dict[str, Any]:
        """The GPU models the cloud rents (public)."""
        return {"items": [s.model_dump(mode="json") for s in skus().values()]}

    @app.get("/v1/prices", tags=["public"], dependencies=[Depends(anonymous)], response_model=sc.PriceList)
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

    @app.get("/v1/quote", tags=["workloads"], response_model=sc.Quote, responses={**sc.AUTH, **sc.errors(404)})
    async def get_quote(
        who: Annotated[str, Depends(tenant)],
        sku: Annotated[str, Query(pattern=ID, max_length=63)],
        gpus: Annotated[int, Query(ge=1, le=100_000)],
        hours: Annotated[float, Query(gt=0, le=24 * 365)],
        price_class: Literal["on_demand", "spot", "reserved"] = "on_demand",
        region: Annotated[str, Query(pattern=r"^\*$|" + ID, max_length=63)] = "*",
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

    @app.get(
        "/v1/workloads/{workload_id}",
        tags=["workloads"],
        response_model=sc.WorkloadView,
        responses={**sc.AUTH, **sc.errors(404)},
    )
    async def get_workload(workload_id: IdPath, who: Annotated[str, Depends(tenant)]) -> dict[str, Any]:
        return await _workload(who, workload_id)  # the closed WorkloadView drops the request's digest

    @app.get("/v1/workloads", tags=["workloads"], response_model=sc.Workloads, responses=sc.AUTH)
    async def list_workloads(
        who: Annotated[str, Depends(tenant)],
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        after: Annotated[str | None, Query(pattern=ID, max_length=63)] = None,
    ) -> dict[str, Any]:
        index = workloads_key(who)
        rank: Any = await redis.zrank(index, after) if after else None
        start = 0 if rank is None else int(rank) + 1
        # One page of ids (one more, to know whether there is a next page), then their
        # documents in one round trip.
        ids: list[Any] = await redis.zrange(index, start, start + limit)
        names = [text(i) for i in ids]
        page, more = names[:limit], len(names) > limit
        docs = await read_docs(redis, [workload_key(who, w) for w in page])
        items = [d for d in docs if d is not None]
        return {"items": items, "next": page[-1] if more and page else None}

    async def _end(command: Any, who: str, workload_id: str) -> JSONResponse:
        await _workload(who, workload_id)  # 404 for unknown and other tenants' workloads alike
        await publish(redis, command, producer="gateway", tenant_id=who, clock=clock)
        return JSONResponse({"workload_id": workload_id, "status": "requested"}, status_code=202)

    @app.post(
        "/v1/workloads/{workload_id}/complete",
        status_code=202,
        tags=["workloads"],
        response_model=sc.Accepted,
        responses={**sc.AUTH, **sc.errors(404)},
    )
    async def complete(workload_id: IdPath, who: Annotated[str, Depends(tenant)]) -> JSONResponse:
        return await _end(CompleteWorkload(workload_id=workload_id), who, workload_id)

    @app.post(
        "/v1/workloads/{workload_id}/cancel",
        status_code=202,
        tags=["workloads"],
        response_model=sc.Accepted,
        responses={**sc.AUTH, **sc.errors(404)},
    )
    async def cancel(workload_id: IdPath, who: Annotated[str, Depends(tenant)]) -> JSONResponse:
        return await _end(CancelWorkload(workload_id=workload_id), who, workload_id)

    fleet.add_routes(app, redis, clock, caller, operator, tenant, anonymous, memory)
    return app
