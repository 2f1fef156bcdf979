"""The API's own Prometheus metrics: requests by route template, method and status, and
their latency. Labels are bounded: the route's template (``/v1/workloads/{workload_id}``,
never the id), ``unmatched`` for paths no route serves. A rate-limited request is one
with status 429.

``GET /metrics`` serves these after the gateway's runtime metrics (its projections'
subscriptions: ``minicloud_shared.runtime.metrics``)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (no per-request task or body buffering): the status is taken from the
    response's start, the route template from what the router matched."""

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

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "GET")
            if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
                method = "other"  # the method is the client's to choose: keep the label bounded
            count = self._counts.get((route, method, str(status)))
            if count is None:
                count = self._counts[(route, method, str(status))] = self.metrics.requests.labels(
                    route, method, str(status)
                )
            count.inc()
            took = self._times.get((route, method))
            if took is None:
                took = self._times[(route, method)] = self.metrics.seconds.labels(route, method)
            took.observe(time.perf_counter() - started)
