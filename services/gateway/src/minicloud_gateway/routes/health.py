"""Liveness and readiness."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError

from minicloud_gateway import schemas as sc
from minicloud_gateway.deps import State
from minicloud_shared.contracts import text
from minicloud_shared.contracts.topology import groups_of
from minicloud_shared.runtime.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=sc.Alive)
async def healthz() -> dict[str, Any]:
    return {"service": "gateway", "up": True}


@router.get(
    "/readyz",
    response_model=sc.Readiness,
    responses={503: {"model": sc.Readiness, "description": "Not ready: the reasons say why"}},
)
async def readyz(g: State) -> JSONResponse:
    """Ready: Redis reachable, groups present, the epoch unchanged, and the
    projections caught up (at most ``max_lag`` entries of any stream unread), so a
    gateway that restarted behind a backlog takes no reads until it has caught up."""
    doc: dict[str, Any] = {"service": "gateway", **g.health.as_dict()}
    lags: dict[str, int | None] = {}
    if g.health.ready:
        try:
            for spec in groups_of("gateway"):
                found: Any = await g.redis.xinfo_groups(spec.stream)
                mine = next((x for x in found if text(x.get("name")) == spec.group), None)
                lags[spec.stream] = None if mine is None or mine.get("lag") is None else int(mine["lag"])
        except RedisError as exc:
            doc.update(ready=False, reasons=[f"redis: {exc}"])
        behind = [f"{s} has {n} unread entries" for s, n in lags.items() if n is None or n > g.max_lag]
        if behind and doc["ready"]:
            doc.update(ready=False, reasons=["projections catching up: " + "; ".join(behind)])
    doc["projection_lag"] = lags
    return JSONResponse(doc, status_code=200 if doc["ready"] else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(g: State) -> Response:
    """Prometheus metrics (docs/operations.md): the projections' runtime, then the API's
    requests. No tenant data; like ``/readyz`` it needs no key (scrape it from the
    cloud's network, and keep it from the internet at the edge)."""
    body = (await g.runtime_metrics()) if g.runtime_metrics is not None else b""
    await g.http_metrics.refresh(g.redis)
    return Response(body + g.http_metrics.render(), media_type=CONTENT_TYPE)


ROUTERS = [router]
