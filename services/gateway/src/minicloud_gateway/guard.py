"""What protects the cloud from its callers, before a route runs.

- :class:`ApiError` and :func:`error_response`: every error is JSON
  ``{"error": {"code", "message"}}`` with a stable code (docs/gateway.md lists them).
- :class:`BodyLimit`: an ASGI middleware that counts the bytes of a request body as
  they are read, whatever ``Content-Length`` says (a chunked body has none), and
  answers 413 past the limit without passing a byte on.
- :class:`MemoryGuard`: Redis runs with ``maxmemory`` and ``noeviction``; the gateway
  refuses new work (503 ``storage_full``) once Redis is above a fraction of it, so a
  filling Redis degrades the public API while the services' commits still have room.
- :func:`rate_limited`: a fixed one-second window counted in Redis (shared by gateway
  replicas), per key or per client address.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from minicloud_shared.contracts import text

log = structlog.get_logger(service="gateway")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class BodyLimit:
    """Reads each request's body first, at most ``limit`` bytes, then hands the app a
    ``receive`` that replays it. A declared length over the limit is refused before a
    byte is read; a body that grows past it while being read (chunked, or a length that
    lied) is refused at the byte that crosses it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, when the client goes

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = error_body("body_too_large", f"request bodies are limited to {self.limit} bytes")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        # The rest of an oversized body is not read: the server closes the connection.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class MemoryGuard:
    """Refuses new work while Redis uses more than ``fraction`` of its ``maxmemory``.

    ``INFO memory`` is read at most every ``every_s`` seconds per process; a Redis
    without ``maxmemory`` (0: a developer's redis-server) is never refused."""

    def __init__(self, redis: Redis, fraction: float = 0.8, every_s: float = 1.0) -> None:
        self.redis, self.fraction, self.every_s = redis, fraction, every_s
        self._at = float("-inf")
        self._full: str | None = None

    async def check(self) -> None:
        now = time.monotonic()
        if now - self._at >= self.every_s:
            try:
                info: Any = await self.redis.info("memory")
            except ResponseError as exc:  # INFO refused (an ACL without it): Redis's own
                # maxmemory still refuses writes (503 storage_full); say so, don't block.
                if self._at == float("-inf"):
                    log.warning("cannot read Redis's memory; the storage guard is off", error=str(exc))
                self._at, self._full = now, None
                return
            used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
            self._full = None
            if limit and used > self.fraction * limit:
                self._full = (
                    f"the cloud's storage is {used * 100 // limit} % full (new work is refused above "
                    f"{round(self.fraction * 100)} %): try again later; reads, cancel and complete still work"
                )
            self._at = now
        if self._full is not None:
            raise ApiError(503, "storage_full", self._full, {"Retry-After": "30"})


async def rate_limited(redis: Redis, who: str, per_s: int) -> None:
    """Count one request of ``who`` (``addr:<ip>``) in this second; 429 past ``per_s``."""
    window = rate_window(who, time.time())
    pipe = redis.pipeline(transaction=False)
    pipe.incr(window)
    pipe.expire(window, 2)
    count, _ = await pipe.execute()
    over(int(count), per_s, "address" if who.startswith("addr:") else "key")


def over(count: int, per_s: int, what: str) -> None:
    """429 with ``Retry-After`` when ``count`` requests this second are more than ``per_s``."""
    if count > per_s:
        raise ApiError(
            429, "rate_limited", f"more than {per_s} requests a second from this {what}", {"Retry-After": "1"}
        )


def rate_window(who: str, now: float) -> str:
    """The Redis counter of ``who``'s requests (a key id, or ``addr:<ip>``) in the second ``now``."""
    return f"mc:gateway:rate:{who}:{int(now)}"


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return text(client[0]) if client else "unknown"
