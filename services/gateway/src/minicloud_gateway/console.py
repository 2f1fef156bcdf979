"""The web console (``/console``): a page of static files that uses the public API
alone, signed in with a session instead of a key.

Signing in (``POST /console/session`` with an API key) checks the key as the API does
and opens a session: a random token in an ``HttpOnly``, ``SameSite=Strict`` cookie
(``Secure`` over HTTPS), valid for ``SESSION_TTL_S``. Redis keeps the token's digest
with the key's digest and id — never the key — and a CSRF token. The page never holds
the key: not in storage, not in script.

Every API route accepts the session where it accepts a key (``deps.caller``): the
same roles, the same tenant scoping, the same rate limit (the key's). A request that
changes something (any method but GET, HEAD and OPTIONS) on a session must carry the
session's CSRF token in ``X-CSRF-Token`` and, when the browser sends ``Origin``, come
from the console's own origin; otherwise 403 ``csrf``. A revoked key ends its sessions
at their next request (the key's record is read on each).

Every answer carries security headers (``SecurityHeaders``): the console's pages a
Content-Security-Policy that allows only its own scripts and styles and no framing;
the API's a policy that allows nothing at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from minicloud_gateway import identity
from minicloud_gateway.guard import ApiError, over
from minicloud_gateway.identity import Authenticated, Caller
from minicloud_gateway.store import PREFIX
from minicloud_shared.contracts import text

COOKIE = "mc_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
ASSETS = {  # file name -> content type; nothing else under /console/ is served
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}


def _session_key(token: str) -> str:
    return f"{PREFIX}session:{hashlib.sha256(token.encode()).hexdigest()}"


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    csrf: str
    key_digest: str
    key_id: str


async def open_session(redis: Redis, key: str) -> Session:
    """A new session for ``key`` (already checked by the caller)."""
    m = identity.KEY_RE.match(key)
    assert m is not None
    s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), identity.digest(key), m.group(1))
    record = {"csrf": s.csrf, "key_digest": s.key_digest, "key_id": s.key_id, "opened": int(time.time())}
    await redis.set(_session_key(s.token), json.dumps(record), ex=SESSION_TTL_S)  # one command: never without expiry
    return s


async def find_session(redis: Redis, token: str) -> Session | None:
    if not token or len(token) > 100:
        return None
    raw: Any = await redis.get(_session_key(token))
    f = json.loads(text(raw)) if raw is not None else {}
    if not {"csrf", "key_digest", "key_id"} <= f.keys():
        return None
    return Session(token, f["csrf"], f["key_digest"], f["key_id"])


async def close_session(redis: Redis, token: str) -> None:
    await redis.delete(_session_key(token))


def _same_origin(request: Request) -> bool:
    """No ``Origin`` (not a browser's cross-origin request), or the console's own."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


async def session_caller(request: Request, redis: Redis, token: str) -> tuple[Authenticated, Session | None]:
    """The caller of a session cookie; a change must carry the session's CSRF token."""
    s = await find_session(redis, token)
    if s is None:
        return Authenticated(None, 0), None
    if request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(given.encode(), s.csrf.encode()) or not _same_origin(request):
            raise ApiError(403, "csrf", "a change from the console needs its CSRF token (X-CSRF-Token)")
    return await identity.authenticate_digest(redis, s.key_digest, s.key_id), s


# --- the routes ---------------------------------------------------------------------------

router = APIRouter(include_in_schema=False)


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=200)


def _signed_in(caller: Caller, s: Session) -> dict[str, Any]:
    return {"role": caller.role, "tenant": caller.tenant, "key_id": caller.key_id, "csrf_token": s.csrf}


def _gateway(request: Request) -> Any:
    return request.app.state.gateway


async def _current(request: Request) -> tuple[Caller, Session]:
    g = _gateway(request)
    found, s = await session_caller(request, g.redis, request.cookies.get(COOKIE, ""))
    if found.caller is None or s is None:
        raise ApiError(401, "unauthenticated", "not signed in")
    over(found.requests_this_second, g.rate_per_s, "key")
    request.state.tenant_id = found.caller.tenant
    return found.caller, s


Current = Annotated[tuple[Caller, Session], Depends(_current)]


@router.post("/console/session")
async def sign_in(body: SignIn, request: Request) -> JSONResponse:
    """Open a session with an API key (the key is checked and never stored)."""
    from minicloud_gateway.deps import anonymous  # deps imports this module

    g = _gateway(request)
    if not _same_origin(request):
        raise ApiError(403, "csrf", "sign in from the console's own page")
    found = await identity.authenticate(g.redis, f"Bearer {body.key.strip()}")
    if found.caller is None:
        await anonymous(request, g)  # guessing keys is rate-limited like anonymous use
        raise ApiError(401, "unauthenticated", "that is not a valid API key")
    over(found.requests_this_second, g.rate_per_s, "key")
    s = await open_session(g.redis, body.key.strip())
    answer = JSONResponse(_signed_in(found.caller, s))
    answer.set_cookie(
        COOKIE,
        s.token,
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return answer


@router.get("/console/session")
async def whoami(current: Current) -> dict[str, Any]:
    """Who is signed in, and the CSRF token for changes (after a reload)."""
    caller, s = current
    return _signed_in(caller, s)


@router.delete("/console/session")
async def sign_out(request: Request) -> Response:
    token = request.cookies.get(COOKIE, "")
    g = _gateway(request)
    await session_caller(request, g.redis, token)  # a sign-out is a change: CSRF checked
    await close_session(g.redis, token)
    answer = Response(status_code=204)
    answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return answer


def _asset(name: str) -> bytes:
    return (resources.files("minicloud_gateway") / "console_assets" / name).read_bytes()


_CACHE: dict[str, bytes] = {}


@router.get("/console")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/")
@router.get("/console/{name}")
async def console_asset(name: str = "index.html") -> Response:
    if name not in ASSETS:
        raise ApiError(404, "not_found", "no such page")
    if name not in _CACHE:
        _CACHE[name] = _asset(name)
    return Response(_CACHE[name], media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


class SecurityHeaders:
    """Pure ASGI: the security headers of every answer (see the module's docstring)."""

    COMMON = (
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-opener-policy", b"same-origin"),
    )

    def __init__(self, app: Any) -> None:
        self.app = app
        self.console = (*self.COMMON, (b"content-security-policy", CONSOLE_CSP.encode()))
        self.api = (*self.COMMON, (b"content-security-policy", API_CSP.encode()))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.console if scope["path"].startswith("/console") else self.api

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, sending)
