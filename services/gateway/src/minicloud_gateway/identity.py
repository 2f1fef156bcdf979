"""Identity: tenants, API keys and roles — the gateway's own domain.

A key is ``mck_<key id>_<secret>``: a recognisable prefix (secret scanners and people
can tell it is a minicloud key), the key id (to revoke it and to find it), and 32 bytes
of secret. It is shown once, when issued; Redis keeps only its SHA-256 digest. Tenant
identity comes from the key alone, never from a path, body or event field.

Records (all under ``mc:gateway:``):
- ``key:<digest>``   hash {key_id, tenant, role, revoked}
- ``keyid:<key id>`` the digest of that key (to revoke by id)
- ``tenant:<id>``    hash {tenant_id, name, created_at}
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from minicloud_shared.contracts import text

PREFIX = "mck_"
KEY_RE = re.compile(r"^mck_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
Role = Literal["operator", "tenant"]
OPERATOR = "operator"
TENANTS = "mc:gateway:tenants"  # every tenant id


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


async def bootstrap_operator(redis: Redis, operator_key: str) -> None:
    """Register the configured operator key (idempotent; the key itself is not stored)."""
    m = KEY_RE.match(operator_key)
    if m is None:
        raise ValueError("MINICLOUD_OPERATOR_KEY must look like mck_<12 hex>_<43 url-safe characters>")
    d = digest(operator_key)
    await redis.hset(_key_record(d), mapping={"key_id": m.group(1), "tenant": "", "role": OPERATOR, "revoked": "0"})
    await redis.set(f"mc:gateway:keyid:{m.group(1)}", d)


async def authenticate(redis: Redis, header: str | None) -> Caller | None:
    """The caller of an ``Authorization: Bearer <key>`` header, or None (missing,
    malformed, unknown or revoked keys alike)."""
    if not header or not header.startswith("Bearer "):
        return None
    key = header.removeprefix("Bearer ").strip()
    if KEY_RE.match(key) is None:
        return None
    raw: Any = await redis.hgetall(_key_record(digest(key)))
    if not raw:
        return None
    rec = {text(k): text(v) for k, v in raw.items()}
    if rec.get("revoked") != "0":
        return None
    # The record was found by the key's digest; comparing ids guards against a record
    # written under the wrong digest.
    if not hmac.compare_digest(rec["key_id"], KEY_RE.match(key).group(1)):  # type: ignore[union-attr]
        return None
    role: Role = "operator" if rec["role"] == OPERATOR else "tenant"
    return Caller(role, rec["tenant"] or None, rec["key_id"])


async def create_tenant(redis: Redis, tenant_id: str, name: str) -> bool:
    """False if the tenant exists."""
    created = await redis.hsetnx(tenant_key(tenant_id), "tenant_id", tenant_id)
    if created:
        await redis.hset(tenant_key(tenant_id), mapping={"name": name, "created_at": datetime.now(UTC).isoformat()})
        await redis.sadd(TENANTS, tenant_id)
    return bool(created)


async def list_tenants(redis: Redis) -> list[dict[str, Any]]:
    """Every tenant, by id, with its name and active key count."""
    ids = sorted(text(i) for i in await redis.smembers(TENANTS))
    pipe = redis.pipeline(transaction=False)
    for t in ids:
        pipe.hgetall(tenant_key(t))
        pipe.scard(f"mc:gateway:tenant:{t}:keys")
    found: list[Any] = await pipe.execute()
    out = []
    for i, t in enumerate(ids):
        rec = {text(k): text(v) for k, v in found[2 * i].items()}
        row = {"tenant_id": t, "name": rec.get("name", ""), "created_at": rec.get("created_at")}
        out.append({**row, "keys_issued": found[2 * i + 1]})
    return out


async def tenant_exists(redis: Redis, tenant_id: str) -> bool:
    return bool(await redis.exists(tenant_key(tenant_id)))


async def issue_key(redis: Redis, tenant_id: str) -> tuple[str, str]:
    """(key id, the key): shown once, stored as a digest."""
    key_id, key = new_key()
    d = digest(key)
    await redis.hset(_key_record(d), mapping={"key_id": key_id, "tenant": tenant_id, "role": "tenant", "revoked": "0"})
    await redis.set(f"mc:gateway:keyid:{key_id}", d)
    await redis.sadd(f"mc:gateway:tenant:{tenant_id}:keys", key_id)
    return key_id, key


async def revoke_key(redis: Redis, tenant_id: str, key_id: str) -> bool:
    """Revoke one of the tenant's keys at once; False if it has no such key."""
    if not await redis.sismember(f"mc:gateway:tenant:{tenant_id}:keys", key_id):
        return False
    d = await redis.get(f"mc:gateway:keyid:{key_id}")
    if d is None:
        return False
    await redis.hset(_key_record(text(d)), "revoked", "1")
    return True


if __name__ == "__main__":  # ``python -m minicloud_gateway.identity operator-key``: a new operator key
    import sys

    if sys.argv[1:] != ["operator-key"]:
        print("usage: python -m minicloud_gateway.identity operator-key", file=sys.stderr)
        raise SystemExit(2)
    print(f"MINICLOUD_OPERATOR_KEY={new_key()[1]}")
