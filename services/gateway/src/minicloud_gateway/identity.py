"""Identity: tenants, API keys and roles — the gateway's own domain.

A key is ``mck_<key id>_<secret>``: a recognisable prefix (secret scanners and people
can tell it is a minicloud key), the key id (to revoke it and to find it), and 32 bytes
of secret. It is shown once, when issued; Redis keeps only its SHA-256 digest. Tenant
identity comes from the key alone, never from a path, body or event field.

Records (all under ``mc:gateway:``):
- ``key:<digest>``   hash {key_id, tenant, role, revoked, created_at, last_used_at, revoked_at}
- ``keyid:<key id>`` the digest of that key (to revoke by id)
- ``tenant:<id>``    hash {tenant_id, name, created_at, max_priority}
- ``tenant:<id>:keys`` the ids of the keys issued to the tenant

``last_used_at`` is written when a key is used and its stored value is a minute old or
more: one write a minute per key, not one per request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from minicloud_gateway.guard import rate_window
from minicloud_shared.contracts import text

PREFIX = "mck_"
KEY_RE = re.compile(r"^mck_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
Role = Literal["operator", "tenant"]
OPERATOR = "operator"
TENANTS = "mc:gateway:tenants"  # every tenant id
DEFAULT_MAX_PRIORITY = 100  # a tenant's priority ceiling until the operator grants more
LAST_USED_RESOLUTION_S = 60


@dataclass(frozen=True, slots=True)
class Caller:
    role: Role
    tenant: str | None  # None for the operator
    key_id: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, the whole key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def _key_record(d: str) -> str:
    return f"mc:gateway:key:{d}"


def tenant_key(tenant_id: str) -> str:
    return f"mc:gateway:tenant:{tenant_id}"


def tenant_keys_key(tenant_id: str) -> str:
    return f"mc:gateway:tenant:{tenant_id}:keys"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def bootstrap_operator(redis: Redis, operator_key: str) -> None:
    """Register the configured operator key (idempotent; the key itself is not stored)."""
    m = KEY_RE.match(operator_key)
    if m is None:
        raise ValueError("MINICLOUD_OPERATOR_KEY must look like mck_<12 hex>_<43 url-safe characters>")
    d = digest(operator_key)
    await redis.hset(_key_record(d), mapping={"key_id": m.group(1), "tenant": "", "role": OPERATOR, "revoked": "0"})
    await redis.set(f"mc:gateway:keyid:{m.group(1)}", d)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A request's caller (None: no valid key) and how many requests its key made in
    this second (0 without a key)."""

    caller: Caller | None
    requests_this_second: int


async def authenticate(redis: Redis, header: str | None) -> Authenticated:
    """The caller of an ``Authorization: Bearer <key>`` header (None for missing,
    malformed, unknown or revoked keys alike; the scheme is case-insensitive, RFC 9110),
    with the key's request counted in the same round trip: the key id is part of the
    key, so its rate window is known before the record is read."""
    scheme, _, key = (header or "").strip().partition(" ")
    key = key.strip()
    m = KEY_RE.match(key) if scheme.lower() == "bearer" else None
    if m is None:
        return Authenticated(None, 0)
    return await authenticate_digest(redis, digest(key), m.group(1))


async def authenticate_digest(redis: Redis, key_digest: str, key_id: str) -> Authenticated:
    """The caller of the key with this digest and id (a console session holds both,
    never the key): its record read and its request counted in one round trip, so a
    key revoked ends its sessions at their next request."""
    now = time.time()
    record, window = _key_record(key_digest), rate_window(key_id, now)
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(record)
    pipe.incr(window)
    pipe.expire(window, 2)
    raw, count, _ = await pipe.execute()
    rec = {text(k): text(v) for k, v in raw.items()}
    # The record was found by the key's digest; comparing ids guards against a record
    # written under the wrong digest.
    if rec.get("revoked") != "0" or not hmac.compare_digest(rec.get("key_id", ""), key_id):
        return Authenticated(None, 0)
    used = rec.get("last_used_unix", "")
    if not used.isdigit() or now - int(used) >= LAST_USED_RESOLUTION_S:
        await redis.hset(record, mapping={"last_used_at": _now(), "last_used_unix": str(int(now))})
    role: Role = "operator" if rec["role"] == OPERATOR else "tenant"
    return Authenticated(Caller(role, rec["tenant"] or None, rec["key_id"]), int(count))


async def create_tenant(redis: Redis, tenant_id: str, name: str) -> bool:
    """False if the tenant exists."""
    created = await redis.hsetnx(tenant_key(tenant_id), "tenant_id", tenant_id)
    if created:
        await redis.hset(tenant_key(tenant_id), mapping={"name": name, "created_at": datetime.now(UTC).isoformat()})
        await redis.sadd(TENANTS, tenant_id)
    return bool(created)


async def list_tenants(redis: Redis) -> list[dict[str, Any]]:
    """Every tenant, by id, with its name, keys issued and active, and priority ceiling."""
    ids = sorted(text(i) for i in await redis.smembers(TENANTS))
    pipe = redis.pipeline(transaction=False)
    for t in ids:
        pipe.hgetall(tenant_key(t))
    records: list[Any] = await pipe.execute()
    out = []
    for t, raw in zip(ids, records, strict=True):
        rec = {text(k): text(v) for k, v in raw.items()}
        keys = await list_keys(redis, t)
        out.append(
            {
                "tenant_id": t,
                "name": rec.get("name", ""),
                "created_at": rec.get("created_at"),
                "keys_issued": len(keys),
                "keys_active": sum(1 for k in keys if not k["revoked"]),
                "max_priority": int(rec.get("max_priority", DEFAULT_MAX_PRIORITY)),
            }
        )
    return out


async def list_keys(redis: Redis, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's keys by id: when issued, last used (to the minute), revoked when."""
    ids = sorted(text(i) for i in await redis.smembers(tenant_keys_key(tenant_id)))
    digests: list[Any] = await redis.mget([f"mc:gateway:keyid:{k}" for k in ids]) if ids else []
    pipe = redis.pipeline(transaction=False)
    for d in digests:
        pipe.hgetall(_key_record(text(d)) if d is not None else "mc:gateway:key:-")
    out = []
    for key_id, raw in zip(ids, await pipe.execute(), strict=True):
        rec = {text(k): text(v) for k, v in raw.items()}
        out.append(
            {
                "key_id": key_id,
                "created_at": rec.get("created_at"),
                "last_used_at": rec.get("last_used_at"),
                "revoked": rec.get("revoked", "1") != "0",
                "revoked_at": rec.get("revoked_at"),
            }
        )
    return out


async def priority_ceiling(redis: Redis, tenant_id: str) -> int:
    """The highest priority the tenant may ask for (the operator may grant more)."""
    found = await redis.hget(tenant_key(tenant_id), "max_priority")
    return DEFAULT_MAX_PRIORITY if found is None else int(found)


async def set_priority_ceiling(redis: Redis, tenant_id: str, max_priority: int) -> None:
    await redis.hset(tenant_key(tenant_id), "max_priority", str(max_priority))


async def tenant_exists(redis: Redis, tenant_id: str) -> bool:
    return bool(await redis.exists(tenant_key(tenant_id)))


async def issue_key(redis: Redis, tenant_id: str) -> tuple[str, str]:
    """(key id, the key): shown once, stored as a digest."""
    key_id, key = new_key()
    d = digest(key)
    await redis.hset(
        _key_record(d),
        mapping={"key_id": key_id, "tenant": tenant_id, "role": "tenant", "revoked": "0", "created_at": _now()},
    )
    await redis.set(f"mc:gateway:keyid:{key_id}", d)
    await redis.sadd(tenant_keys_key(tenant_id), key_id)
    return key_id, key


async def revoke_key(redis: Redis, tenant_id: str, key_id: str) -> bool:
    """Revoke one of the tenant's keys at once; False if it has no such key."""
    if not await redis.sismember(tenant_keys_key(tenant_id), key_id):
        return False
    d = await redis.get(f"mc:gateway:keyid:{key_id}")
    if d is None:
        return False
    await redis.hset(_key_record(text(d)), mapping={"revoked": "1", "revoked_at": _now()})
    return True


if __name__ == "__main__":  # ``python -m minicloud_gateway.identity operator-key``: a new operator key
    import sys

    if sys.argv[1:] != ["operator-key"]:
        print("usage: python -m minicloud_gateway.identity operator-key", file=sys.stderr)
        raise SystemExit(2)
    print(f"MINICLOUD_OPERATOR_KEY={new_key()[1]}")
