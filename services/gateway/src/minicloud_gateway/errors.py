"""The API's errors: every one is JSON ``{"error": {"code", "message"}}`` with a
stable code, whatever raised it."""

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import BusyLoadingError, OutOfMemoryError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from minicloud_gateway.guard import ApiError

log = structlog.get_logger(service="gateway")


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def api_error(_: Request, exc: Any) -> JSONResponse:
    return error(exc.status, exc.code, exc.message, exc.headers)


async def invalid(_: Request, exc: Any) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        at = first.get("loc", ("body", 0))[-1]
        return error(422, "invalid_request", f"the body is not valid JSON (at character {at})")
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return error(422, "invalid_request", f"{where or 'body'}: {first.get('msg', 'invalid')}")


async def http_error(request: Request, exc: Any) -> JSONResponse:
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Every method of the path (Starlette names only the first route's).
        partial = [r for r in _routes(request.app.routes) if r.matches(request.scope)[0] == Match.PARTIAL]
        allowed = {m for r in partial for m in getattr(r, "methods", None) or ()}
        headers["Allow"] = ", ".join(sorted(allowed - {"HEAD"}))
    return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers)


def _routes(routes: Any) -> Any:
    """Every route, those of included routers too (FastAPI includes them lazily; the
    routers here have no prefixes)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield r


async def redis_full(_: Request, exc: Any) -> JSONResponse:
    message = "the cloud's storage is full: new work is refused, try again later"
    return error(503, "storage_full", message, {"Retry-After": "30"})


async def redis_error(request: Request, exc: Any) -> JSONResponse:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | BusyLoadingError):
        # Redis restarting, unreachable or loading: nothing was decided, a retry is safe.
        message = "the cloud's store is not reachable: retry shortly"
        return error(503, "unavailable", message, {"Retry-After": "2"})
    return await internal(request, exc)  # a refused command (ACL, script): a fault of ours


async def internal(request: Request, exc: Exception) -> JSONResponse:
    log.error("request failed", method=request.method, route=request.url.path, exc_info=exc)
    return error(500, "internal", "the gateway failed on this request; it is logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(OutOfMemoryError, redis_full)
    app.add_exception_handler(RedisError, redis_error)
    app.add_exception_handler(Exception, internal)
