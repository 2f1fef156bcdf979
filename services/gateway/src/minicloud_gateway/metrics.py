"""The API's own Prometheus metrics and request log: requests by route template, method
and status, and their latency. Labels are bounded: the route's template
(``/v1/workloads/{workload_id}``, never the id), ``unmatched`` for paths no route
serves. A rate-limited request is one with status 429.

Every request has an id: the caller's ``X-Request-Id`` when it is a plain token, else a
new one. It is answered in the ``X-Request-Id`` header, logged with the request (route,
method, status, latency, tenant), and is the correlation id of every command the
request publishes, so every event made on its behalf, by any service, carries it.

``GET /metrics`` serves these after the gateway's runtime metrics (its projections'
subscriptions: ``minicloud_shared.runtime.metrics``), with Redis' memory and clients."""

from __future__ import annotations

import re
import time
from contextvars import ContextVar
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from minicloud_shared.contracts import new_event_id

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")  # what a caller may name its request
_request_id: ContextVar[str | None] = ContextVar("minicloud_request_id", default=None)
log = structlog.get_logger(service="gateway")


def request_id() -> str | None:
    """The id of the request being answered (the correlation id of what it publishes)."""
    return _request_id.get()


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "minicloud_gateway_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "minicloud_gateway_request_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["route", "method"],
            buckets=_SECONDS,
            registry=self.registry,
        )

        # Redis itself, read from INFO at scrape time (the gateway's user may read INFO:
        # its storage guard does too). One collector for the cloud, not an exporter.
        self.redis_used = Gauge("minicloud_redis_used_memory_bytes", "Redis' used_memory", registry=self.registry)
        self.redis_max = Gauge(
            "minicloud_redis_maxmemory_bytes", "Redis' maxmemory (0: no limit)", registry=self.registry
        )
        self.redis_clients = Gauge(
            "minicloud_redis_connected_clients", "Clients connected to Redis", registry=self.registry
        )
        self.redis_errors = Counter(
            "minicloud_redis_info_errors", "Scrapes that could not read Redis' INFO", registry=self.registry
        )

    async def refresh(self, redis: Redis) -> None:
        try:
            memory: Any = await redis.info("memory")
            clients: Any = await redis.info("clients")
        except RedisError:
            self.redis_errors.inc()
            return
        self.redis_used.set(int(memory.get("used_memory", 0)))
        self.redis_max.set(int(memory.get("maxmemory", 0)))
        self.redis_clients.set(int(clients.get("connected_clients", 0)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (no per-request task or body buffering): the status is taken from the
    response's start, the route template from what the router matched, the tenant from
    what authentication found (``request.state.tenant_id``)."""

    def __init__(self, app: Any, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # The labelled series, by their labels (bounded sets): found once, not per request.
        self._counts: dict[tuple[str, str, str], Any] = {}
        self._times: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before responding
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else new_event_id()
        token = _request_id.set(rid)

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _request_id.reset(token)
            took = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "GET")
            if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
                method = "other"  # the method is the client's to choose: keep the label bounded
            self._observe(route, method, str(status), took)
            state = scope.get("state") or {}
            log.info(
                "request",
                route=route,
                method=method,
                status=status,
                ms=round(took * 1000, 2),
                tenant_id=state.get("tenant_id"),
                correlation_id=rid,
            )

    def _observe(self, route: str, method: str, status: str, took: float) -> None:
        count = self._counts.get((route, method, status))
        if count is None:
            count = self._counts[(route, method, status)] = self.metrics.requests.labels(route, method, status)
        count.inc()
        timer = self._times.get((route, method))
        if timer is None:
            timer = self._times[(route, method)] = self.metrics.seconds.labels(route, method)
        timer.observe(took)
