"""The public API (``/v1``): the only HTTP surface of the cloud — the wiring.

Writes become commands on the owning service's command stream; reads come from the
gateway's projections. Errors are JSON ``{"error": {"code", "message"}}`` with a stable
code (``errors``). Another tenant's object answers exactly like a missing one (404).
Request bodies are size-limited and refuse unknown fields.

The routes are grouped by resource in ``routes/``: ``health``, ``tenants`` (and keys),
``workloads``, ``prices`` (SKUs, price list and versions, quotes), ``operations``,
``hosts`` (and capacity, availability, regions), ``reservations``, ``accounts`` (and
invoices, usage, budget). What they depend on — the gateway's state, the caller — is
in ``deps``, and lives on ``app.state.gateway``.
"""

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from redis.asyncio import Redis

from minicloud_gateway import errors
from minicloud_gateway import schemas as sc
from minicloud_gateway.admission import FleetShapes
from minicloud_gateway.console import SecurityHeaders
from minicloud_gateway.console import router as console_router
from minicloud_gateway.deps import Gateway
from minicloud_gateway.guard import ApiError, BodyLimit, MemoryGuard
from minicloud_gateway.metrics import HttpMetrics, MetricsMiddleware
from minicloud_gateway.routes import (
    accounts,
    hosts,
    operations,
    operators,
    prices,
    reservations,
    tenants,
    workloads,
)
from minicloud_gateway.routes import health as liveness
from minicloud_gateway.routes.workloads import SUBMIT_LUA
from minicloud_shared.clock import Clock, SystemClock
from minicloud_shared.runtime import Health

MAX_BODY_BYTES = 64 * 1024
RESOURCES = (liveness, tenants, workloads, prices, operations, operators, hosts, reservations, accounts)
__all__ = ["SUBMIT_LUA", "ApiError", "create_app"]


def create_app(
    redis: Redis,
    health: Health,
    rate_per_s: int = 50,
    clock: Clock | None = None,
    max_lag: int = 1000,
    anonymous_rate_per_s: int = 20,
    memory_fraction: float = 0.8,
    memory_every_s: float = 1.0,
    runtime_metrics: Callable[[], Awaitable[bytes]] | None = None,
    capacity_every_s: float = 60.0,
) -> FastAPI:
    """The API on ``redis``; each key may make ``rate_per_s`` requests a second, and each
    client address ``anonymous_rate_per_s`` without a valid key (429 beyond); new work
    is refused (503) while Redis uses more than ``memory_fraction`` of its maxmemory;
    commands and "now" follow ``clock`` (the cloud's, accelerated in the demo); ready
    while no projection is more than ``max_lag`` entries behind. ``GET /metrics``
    serves ``runtime_metrics`` (the gateway runtime's) and the API's own. The console is
    served at ``/console`` (``console``); there is no ``/docs`` page (it loaded its
    scripts from a CDN): the OpenAPI document is ``/openapi.json``."""
    app = FastAPI(
        title="minicloud public API",
        version="1",
        responses=sc.EVERY,
        description="A minimal public GPU cloud: workloads on GPUs, metered per second, billed from a price list.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = Gateway(
        redis=redis,
        health=health,
        clock=clock or SystemClock(),
        memory=MemoryGuard(redis, memory_fraction, memory_every_s),
        shapes=FleetShapes(redis),
        submit_script=redis.register_script(SUBMIT_LUA),
        rate_per_s=rate_per_s,
        anonymous_rate_per_s=anonymous_rate_per_s,
        max_lag=max_lag,
        http_metrics=HttpMetrics(),
        runtime_metrics=runtime_metrics,
        capacity_every_s=capacity_every_s,
    )
    errors.install(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=app.state.gateway.http_metrics)
    for resource in RESOURCES:
        for router in resource.ROUTERS:
            app.include_router(router)
    app.include_router(console_router)
    return app
