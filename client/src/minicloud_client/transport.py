"""Sending a request to the API: auth, retries of 429 and 503, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

RETRY_FOR_S = 60.0  # how long a call waits out 429 and 503 answers in all


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: Any = None
    params: dict[str, Any] = field(default_factory=dict)  # None values are left out
    headers: dict[str, str] = field(default_factory=dict)
    auth: bool = True  # send the key (public routes work without one)


@dataclass(frozen=True)
class Reply:
    status: int
    data: Any  # the JSON body (None if empty)
    headers: httpx.Headers

    @property
    def error(self) -> tuple[str, str] | None:
        """The API's (code, message) for an error reply."""
        if self.status < 400:
            return None
        err = self.data.get("error") if isinstance(self.data, dict) else None
        if isinstance(err, dict):
            return str(err.get("code", self.status)), str(err.get("message", ""))
        return f"http_{self.status}", str(self.data)[:200]


class ApiError(Exception):
    """The API refused the request: its status, stable code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """The endpoint did not answer."""


def retry_after(headers: httpx.Headers) -> float:
    """How long the server asks to wait before a retry (1 to 30 s; 2 s if it does not say)."""
    value = headers.get("Retry-After", "")
    return max(1.0, min(float(value), 30.0)) if value.isdigit() else 2.0


def _reply(r: httpx.Response) -> Reply:
    try:
        data = r.json() if r.content else None
    except ValueError:
        data = {"error": {"code": f"http_{r.status_code}", "message": r.text[:200]}}
    return Reply(r.status_code, data, r.headers)


def _raise_for(reply: Reply) -> Any:
    if reply.error is not None:
        code, message = reply.error
        raise ApiError(reply.status, code, message)
    return reply.data


Notice = Callable[[Request, Reply, float], None]  # told of each retry: the request, the reply, the pause


class _Base:
    def __init__(
        self, endpoint: str, key: str | None = None, *, retry_for_s: float = RETRY_FOR_S, on_retry: Notice | None = None
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.key = key
        self.retry_for_s = retry_for_s
        self.on_retry = on_retry

    def _headers(self, req: Request) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self.key}"} if self.key and req.auth else {}
        return {**auth, **req.headers}

    def _params(self, req: Request) -> dict[str, Any] | None:
        # None, not {}: httpx replaces a path's own query string with any params given.
        return {k: v for k, v in req.params.items() if v is not None} or None

    def _pause(self, req: Request, reply: Reply, waited: float) -> float | None:
        """How long to wait before retrying ``reply``, or None to answer it."""
        if reply.status not in (429, 503) or waited >= self.retry_for_s:
            return None
        pause = min(retry_after(reply.headers), self.retry_for_s - waited)
        if self.on_retry is not None:
            self.on_retry(req, reply, pause)
        return pause


class Client(_Base):
    """The API, synchronously (the CLI, tests)."""

    def __init__(
        self,
        endpoint: str,
        key: str | None = None,
        *,
        timeout: float = 30,
        transport: httpx.BaseTransport | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(endpoint, key, **kw)
        self.http = httpx.Client(base_url=self.endpoint, timeout=timeout, transport=transport)

    def send(self, req: Request) -> Reply:
        """The reply, after waiting out 429 and 503 (bounded); never raises for a status."""
        waited = 0.0
        while True:
            try:
                r = self.http.request(
                    req.method, req.path, json=req.body, params=self._params(req), headers=self._headers(req)
                )
            except httpx.HTTPError as exc:
                raise Unreachable(f"cannot reach {self.endpoint}: {exc}") from exc
            reply = _reply(r)
            pause = self._pause(req, reply, waited)
            if pause is None:
                return reply
            time.sleep(pause)
            waited += pause

    def call(self, req: Request) -> Any:
        """The reply's JSON; ``ApiError`` if the API refused."""
        return _raise_for(self.send(req))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The API, asynchronously (the demo, benchmarks)."""

    def __init__(
        self, endpoint: str, key: str | None = None, *, timeout: float = 30, max_connections: int = 32, **kw: Any
    ) -> None:
        super().__init__(endpoint, key, **kw)
        limits = httpx.Limits(max_connections=max_connections)
        self.http = httpx.AsyncClient(base_url=self.endpoint, timeout=timeout, limits=limits)

    async def send(self, req: Request, key: str | None = None) -> Reply:
        """The reply, after waiting out 429 and 503 (bounded); never raises for a status.
        ``key``: another caller's key than the client's (the demo plays every tenant)."""
        headers = self._headers(req) if key is None else {"Authorization": f"Bearer {key}", **req.headers}
        waited = 0.0
        while True:
            try:
                r = await self.http.request(
                    req.method, req.path, json=req.body, params=self._params(req), headers=headers
                )
            except httpx.HTTPError as exc:
                raise Unreachable(f"cannot reach {self.endpoint}: {exc}") from exc
            reply = _reply(r)
            pause = self._pause(req, reply, waited)
            if pause is None:
                return reply
            await asyncio.sleep(pause)
            waited += pause

    async def call(self, req: Request, key: str | None = None) -> Any:
        return _raise_for(await self.send(req, key))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
