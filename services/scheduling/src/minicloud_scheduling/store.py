"""Scheduling's keys and raw reads: every ``mc:scheduling:`` key is named here, so a
hash tag (for a Redis Cluster) or a prefix is added in one place. Typed loads read
through the runtime's transaction (their versions are checked at commit); the raw
reads below them are indexes that need no version check."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from minicloud_scheduling.placement import HostView
from minicloud_scheduling.queue import Release
from minicloud_scheduling.state import HostRecord, Quota, Workload
from minicloud_shared.contracts import text
from minicloud_shared.runtime import Transaction

SERVICE = "scheduling"
PREFIX = f"mc:{SERVICE}:"
HOSTS = PREFIX + "hosts"  # set of host ids
QUEUE = PREFIX + "queue"  # zset of queued workload ids, best first (state.queue_score)
ALLOCATIONS = PREFIX + "allocations"  # allocation id -> workload id
DEADLINES = PREFIX + "deadlines"  # running workload id -> when its maximum duration ends (epoch s)
SPOT = PREFIX + "spot"  # running spot workload id -> its GPUs, JSON [[host, [indices]], ...]
PREEMPTIONS = PREFIX + "preemptions"  # spot workload id under notice -> when it stops (epoch s)
# Running workload id -> when its maximum duration ends and its GPUs, JSON
# {"end": epoch s, "slices": [[host, [indices]], ...]}: backfill's reservations.
RUNNING = PREFIX + "running"


def host_key(host_id: str) -> str:
    return f"{PREFIX}host:{host_id}"


def workload_key(workload_id: str) -> str:
    return f"{PREFIX}wl:{workload_id}"


def budget_key(tenant_id: str) -> str:
    """Whether billing has stopped the tenant (a hard limit reached): {blocked, reason}."""
    return f"{PREFIX}budget:{tenant_id}"


def quota_key(tenant_id: str) -> str:
    return f"{PREFIX}quota:{tenant_id}"


def tenant_workloads_key(tenant_id: str) -> str:
    """A tenant's workload ids -> the client command that submitted each."""
    return f"{PREFIX}tenant:{tenant_id}:workloads"


# --- typed records, through the transaction ---------------------------------------------


async def load_workload(tx: Transaction, workload_id: str) -> Workload | None:
    doc = await tx.get(workload_key(workload_id))
    return None if doc is None else Workload.model_validate(doc)


async def load_host(tx: Transaction, host_id: str) -> HostRecord | None:
    doc = await tx.get(host_key(host_id))
    return None if doc is None else HostRecord.model_validate(doc)


async def load_quota(tx: Transaction, tenant_id: str) -> Quota:
    return Quota.model_validate(await tx.get(quota_key(tenant_id)) or {})


async def budget_block(tx: Transaction, tenant_id: str) -> str | None:
    """Why the tenant's budget stops it, or None while it does not."""
    doc = await tx.get(budget_key(tenant_id))
    return str(doc["reason"]) if doc is not None and doc["blocked"] else None


async def put_budget(tx: Transaction, tenant_id: str, blocked: bool, reason: str) -> None:
    await tx.put(budget_key(tenant_id), {"blocked": blocked, "reason": reason})


# --- indexes ---------------------------------------------------------------------------


async def queue_window(tx: Transaction, size: int) -> dict[str, float]:
    """The first ``size`` queued workload ids and their scores, best first."""
    rows: list[Any] = await tx.redis.zrange(QUEUE, 0, size - 1, withscores=True)
    return {text(r): float(score) for r, score in rows}


async def queue_length(tx: Transaction) -> int:
    return int(await tx.redis.zcard(QUEUE))


async def due(tx: Transaction, index: str, at: float, limit: int = 256) -> list[str]:
    """Members of ``index`` (DEADLINES or PREEMPTIONS) due at ``at`` or before."""
    raw: Any = await tx.redis.zrangebyscore(index, "-inf", at, start=0, num=limit)
    return [text(r) for r in raw]


async def spot_held(tx: Transaction) -> dict[str, list[tuple[str, list[int], int, int]]]:
    """Running spot workloads and what each holds per host: GPUs, CPU, memory (entries
    written before CPU and memory were kept hold none)."""
    raw: Any = await tx.redis.hgetall(SPOT)
    return {text(k): [(e[0], e[1], *(e[2:4] or [0, 0])) for e in json.loads(v)] for k, v in raw.items()}


def spot_entry(slices: list[tuple[str, list[int]]], resources: list[tuple[int, int]]) -> str:
    return json.dumps([[h, list(g), *(resources[i] if resources else (0, 0))] for i, (h, g) in enumerate(slices)])


async def releases(tx: Transaction) -> list[Release]:
    """When running work's GPUs are free at the latest (its maximum durations' ends).
    Work placed before this index existed is absent: its GPUs are never counted as
    coming free, which only makes reservations later (more cautious), never wrong."""
    raw: Any = await tx.redis.hgetall(RUNNING)
    out = []
    for value in raw.values():
        doc = json.loads(value)
        at = datetime.fromtimestamp(doc["end"], UTC)
        held = tuple(tuple(r) for r in doc.get("resources", ()))
        out.append(Release(at, tuple((h, tuple(g)) for h, g in doc["slices"]), held))
    return out


def running_entry(end: float, slices: list[tuple[str, list[int]]], resources: list[tuple[int, int]]) -> str:
    return json.dumps({"end": end, "slices": [[h, list(g)] for h, g in slices], "resources": resources})


async def workloads_of_allocations(tx: Transaction, allocation_ids: set[str]) -> list[str]:
    if not allocation_ids:
        return []
    found = await tx.redis.hmget(ALLOCATIONS, sorted(allocation_ids))
    return sorted({text(w) for w in found if w is not None})


async def tenant_workload_ids(tx: Transaction, tenant_id: str) -> list[str]:
    ids: Any = await tx.redis.hkeys(tenant_workloads_key(tenant_id))
    return sorted(text(i) for i in ids)


# --- the host log and host records, for the fleet cache --------------------------------


async def host_log_first(redis: Redis, stream: str) -> str | None:
    first: Any = await redis.xrange(stream, count=1)
    return text(first[0][0]) if first else None


async def host_log_last(redis: Redis, stream: str) -> str | None:
    last: Any = await redis.xrevrange(stream, count=1)
    return text(last[0][0]) if last else None


async def host_log_after(redis: Redis, stream: str, position: str) -> list[tuple[str, Any]]:
    changes: Any = await redis.xread({stream: position}, count=10_000)
    return [(text(entry_id), fields) for _, entries in changes for entry_id, fields in entries]


async def host_ids(redis: Redis) -> list[str]:
    return sorted(text(i) for i in await redis.smembers(HOSTS))


async def host_views(redis: Redis, ids: list[str]) -> dict[str, HostView | None]:
    """The placement views of these hosts' records (None: the record is gone)."""
    pipe = redis.pipeline(transaction=False)
    for h in ids:
        pipe.hmget(host_key(h), ["v", "d"])
    out: dict[str, HostView | None] = {}
    for host_id, (version, data) in zip(ids, await pipe.execute(), strict=True):
        out[host_id] = None if data is None else HostRecord.model_validate(json.loads(data)).view(int(version))
    return out
