"""The gateway's keys and raw reads: every ``mc:gateway:`` key of its projections is
named here (identity's keys are in ``identity``).

``wl:<tenant>:<workload>`` holds a workload as a tenant sees it; ``wls:<tenant>`` lists a
tenant's workloads by submission order (for pagination). Hosts (``host:<id>``, listed in
``hosts``) carry their place, state, faulted GPUs and the GPUs each allocation holds.
Invoices (``inv:<tenant>:<month>``) and accounts (``acct:<tenant>``) are billing's
snapshots. An operator's command is followed in ``op:<command id>`` until the owner
accepts or rejects it. Reads never touch another service's keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from redis.asyncio import Redis

from minicloud_shared.contracts import text

PREFIX = "mc:gateway:"
CATALOG = PREFIX + "catalog"  # catalog versions published after the base list, as billing accepted them
HOSTS = PREFIX + "hosts"  # every host id the gateway has seen
QUEUE = PREFIX + "queue"  # "<tenant>/<workload>" of every workload waiting, by submission time
RESERVATION_TENANTS = PREFIX + "resv-tenants"  # tenants holding reservations


def workload_key(tenant: str, workload_id: str) -> str:
    return f"{PREFIX}wl:{tenant}:{workload_id}"


def trail_key(tenant: str, workload_id: str) -> str:
    """Hash: event id -> JSON of each fact about the workload the gateway saw (its trace)."""
    return f"{PREFIX}trail:{tenant}:{workload_id}"


def workloads_key(tenant: str) -> str:
    return f"{PREFIX}wls:{tenant}"


def host_key(host_id: str) -> str:
    return f"{PREFIX}host:{host_id}"


def invoice_key(tenant: str, month: str) -> str:
    return f"{PREFIX}inv:{tenant}:{month}"


def invoices_key(tenant: str) -> str:
    """Sorted set of the months a tenant has invoices for (score yyyymm)."""
    return f"{PREFIX}invs:{tenant}"


def account_key(tenant: str) -> str:
    return f"{PREFIX}acct:{tenant}"


def allocations_key(tenant: str) -> str:
    """Hash: allocation id -> workload id, for a tenant (explanations name workloads)."""
    return f"{PREFIX}allocs:{tenant}"


def reservations_key(tenant: str) -> str:
    """A tenant's reservations as scheduling granted them: {"items": {id: reservation}}."""
    return f"{PREFIX}resv:{tenant}"


def op_key(command_id: str) -> str:
    return f"{PREFIX}op:{command_id}"


# A document the API writes before its events arrive (a submitted workload, a pending
# operation): created at version 1 unless the projection got there first, optionally
# listed in a sorted set in the same step; the document as it stands is returned.
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'v', 1, 'd', ARGV[1])
end
if KEYS[2] then
  redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
end
return redis.call('HGET', KEYS[1], 'd')
"""


async def read_doc(redis: Redis, key: str) -> dict[str, Any] | None:
    """A projection's document (the runtime's versioned record), or None."""
    data = await redis.hget(key, "d")
    return None if data is None else dict(json.loads(data))


async def read_docs(redis: Redis, keys: list[str]) -> list[dict[str, Any] | None]:
    """Several documents in one round trip, in the order of ``keys``."""
    pipe = redis.pipeline(transaction=False)
    for k in keys:
        pipe.hget(k, "d")
    return [None if d is None else dict(json.loads(d)) for d in await pipe.execute()]


async def members(redis: Redis, key: str) -> list[str]:
    """The members of a set, as text, sorted."""
    return sorted(text(m) for m in await redis.smembers(key))


async def ranked(redis: Redis, key: str, newest_first: bool = False) -> list[str]:
    """The members of a sorted set by score, as text."""
    raw: Any = await (redis.zrevrange(key, 0, -1) if newest_first else redis.zrange(key, 0, -1))
    return [text(m) for m in raw]


def request_digest(body: Any) -> str:
    """What identifies a request's body under its Idempotency-Key. It is kept in the
    document the key names (a workload, an operation), so the check lasts as long as
    the key's meaning does: a key names one thing for good."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def create_doc(redis: Redis, key: str, doc: dict[str, Any], index: tuple[str, str, float] | None = None) -> Any:
    """Write ``doc`` at version 1 unless the key exists (and list it in ``index``: sorted
    set, member, score); returns the document as it stands."""
    keys = [key, index[0]] if index else [key]
    args = [json.dumps(doc), index[2], index[1]] if index else [json.dumps(doc)]
    return json.loads(await redis.eval(_CREATE_LUA, len(keys), *keys, *args))
