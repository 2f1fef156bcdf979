"""What the API's routes depend on: the gateway's state (on ``app.state``), the caller
(authenticated, rate-limited) and the shapes of path, query and header values.

No ``from __future__ import annotations`` here or in the route modules: FastAPI reads
the handlers' annotations when they are defined."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Strict
from redis.asyncio import Redis

from minicloud_gateway import console, identity
from minicloud_gateway.admission import FleetShapes
from minicloud_gateway.guard import ApiError, MemoryGuard, client_address, over, rate_limited
from minicloud_gateway.identity import Caller
from minicloud_gateway.metrics import HttpMetrics
from minicloud_shared.clock import Clock
from minicloud_shared.runtime import Health

# What a string of a request may hold. Ids are lower-case names; free text (names,
# reasons) has no control characters (terminal escapes, NUL) and no bidirectional
# overrides, so what the CLI prints is what was typed.
ID = r"^[a-z0-9][a-z0-9\-_.]{0,62}$"
TEXT = r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*$"
MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"
Int = Annotated[int, Strict()]  # JSON true is not 1
IdPath = Annotated[str, Path(pattern=ID, max_length=63)]
IdQuery = Annotated[str | None, Query(pattern=ID, max_length=63)]
MonthPath = Annotated[str, Path(pattern=MONTH)]
IdemKey = Annotated[str | None, Header(min_length=1, max_length=128, pattern=TEXT)]


@dataclass
class Gateway:
    """The API's state: the store, the cloud's clock, its guards and limits."""

    redis: Redis
    health: Health
    clock: Clock
    memory: MemoryGuard  # refuses new work while Redis is nearly full
    shapes: FleetShapes  # what the fleet could ever hold
    submit_script: Any  # workloads.SUBMIT_LUA, registered
    rate_per_s: int  # requests a second per key
    anonymous_rate_per_s: int  # requests a second per client address without a valid key
    max_lag: int  # ready while no projection is more than this many entries behind
    http_metrics: HttpMetrics  # the API's requests (GET /metrics)
    capacity_every_s: float  # seconds between samples of GET /v1/capacity/history
    runtime_metrics: Callable[[], Awaitable[bytes]] | None  # the projections' runtime (GET /metrics)


async def gateway(request: Request) -> Gateway:
    # async: FastAPI runs a plain function dependency in a worker thread, a thread hop
    # that cost a third of a read's time.
    state: Gateway = request.app.state.gateway
    return state


State = Annotated[Gateway, Depends(gateway)]
bearer = HTTPBearer(auto_error=False, description="An API key: Authorization: Bearer mck_<id>_<secret>")


async def anonymous(request: Request, g: State) -> None:
    """A request without a valid key counts against its client address."""
    await rate_limited(g.redis, "addr:" + client_address(request.scope), g.anonymous_rate_per_s)


async def caller(
    request: Request, g: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    session = request.cookies.get(console.COOKIE) if credentials is None else None
    if session is not None:  # the console: a session instead of a key (CSRF checked)
        found, _ = await console.session_caller(request, g.redis, session)
    else:
        header = f"Bearer {credentials.credentials}" if credentials is not None else None
        found = await identity.authenticate(g.redis, header)  # and the key's request counted
    if found.caller is None:
        await anonymous(request, g)  # guessing keys is rate-limited like anonymous use
        raise ApiError(
            401,
            "unauthenticated",
            "a valid API key is required: Authorization: Bearer mck_...",
            {"WWW-Authenticate": "Bearer"},
        )
    over(found.requests_this_second, g.rate_per_s, "key")
    request.state.tenant_id = found.caller.tenant  # for the request's log line
    return found.caller


async def operator(c: Annotated[Caller, Depends(caller)]) -> Caller:
    if c.role != "operator":
        raise ApiError(403, "forbidden", "this needs the operator's key")
    return c


async def tenant(c: Annotated[Caller, Depends(caller)]) -> str:
    if c.tenant is None:
        raise ApiError(403, "forbidden", "this needs a tenant's key")
    return c.tenant


AnyCaller = Annotated[Caller, Depends(caller)]
Operator = Annotated[Caller, Depends(operator)]
Tenant = Annotated[str, Depends(tenant)]
