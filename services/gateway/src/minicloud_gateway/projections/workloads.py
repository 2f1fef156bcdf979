"""Workloads as a tenant sees them (``store.workload_key``): status, pending reason,
allocation, charge and when things happened, from scheduling's and billing's facts.

Facts of one workload can arrive in any order across redeliveries; ``advances``
decides whether a fact's status replaces the one shown."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from minicloud_gateway import store
from minicloud_gateway.projections.hosts import allocation_placed
from minicloud_shared.contracts import Message
from minicloud_shared.contracts.agent import EndpointReady, TaskRunning
from minicloud_shared.contracts.billing import AllocationCharged
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    WorkloadAccepted,
    WorkloadEnded,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadStarted,
)
from minicloud_shared.runtime import Transaction

# How far along a status is: a later status never goes back (queued after started is
# old news), except a running workload requeued after a fault, a drain or preemption.
WAITING = ("accepted", "queued")  # in the operator's queue
STATUS_ORDER = {"submitted": 0, "accepted": 1, "queued": 2, "running": 3, "rejected": 9, "ended": 9}


def advances(current: str, new: str) -> bool:
    """Whether a fact saying ``new`` moves a workload shown as ``current``."""
    if current == "running" and new == "queued":
        return True  # requeued
    return STATUS_ORDER.get(new, 0) >= STATUS_ORDER.get(current, 0)


Changes = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


async def update(tx: Transaction, msg: Message[Any], changes: Changes) -> None:
    """Apply ``changes`` (or ``changes(document)``, for changes that depend on it) to the
    workload's document; a status that does not advance it is left out."""
    tenant = msg.envelope.tenant_id
    if tenant is None:
        return
    key = store.workload_key(tenant, msg.payload.workload_id)
    doc = dict(await tx.get(key) or {"workload_id": msg.payload.workload_id, "status": "submitted"})
    was = doc["status"]
    found = changes(doc) if callable(changes) else changes
    new = found.get("status")
    if new is not None and not advances(doc["status"], new):
        found = {k: v for k, v in found.items() if k != "status"}
    doc.update(found)
    await tx.put(key, doc)
    if doc["status"] != was:
        # The operator's queue (GET /v1/queue): every workload not yet placed, oldest
        # first; touched only when the status changes, not on every charge or log fact.
        member = f"{tenant}/{msg.payload.workload_id}"
        if doc["status"] in WAITING:
            since = doc.get("submitted_at") or msg.envelope.occurred_at.isoformat()
            tx.zadd(store.QUEUE, member, datetime.fromisoformat(since).timestamp())
        elif was in WAITING:
            tx.zrem(store.QUEUE, member)
    env = msg.envelope
    # The workload's trace (GET /v1/workloads/{id}/trace): every fact, keyed by its
    # event id (a redelivered fact writes the same field again).
    step = {
        "at": env.occurred_at.isoformat(),
        "type": env.event_type,
        "producer": env.producer,
        "event_id": env.event_id,
        "correlation_id": env.correlation_id,
        "causation_id": env.causation_id,
        "status": doc["status"],
        "allocation_id": getattr(msg.payload, "allocation_id", None),
    }
    tx.hset(store.trail_key(tenant, msg.payload.workload_id), env.event_id, json.dumps(step))


def workload_keys(m: Message[Any]) -> list[str]:
    """The workload document a scheduling or billing fact updates, read with its batch."""
    tenant = m.envelope.tenant_id
    return [store.workload_key(tenant, m.payload.workload_id)] if tenant is not None else []


async def accepted(msg: Message[WorkloadAccepted], tx: Transaction) -> None:
    p = msg.payload
    spec = {k: getattr(p, k) for k in ("name", "kind", "sku", "gpus_per_node", "nodes", "region", "price_class")}
    if p.skus:
        spec["skus"] = p.skus
    for field in ("gpu_milli", "cpu_milli", "memory_mib", "mig_profile"):
        if getattr(p, field) is not None:
            spec[field] = getattr(p, field)
    tenant = msg.envelope.tenant_id
    # The API lists a workload when it creates the document; only one this fact creates
    # is listed here. Listing it again would move it in the index, and a client paging
    # through it would see it twice (or miss another).
    new = tenant is not None and await tx.get(store.workload_key(tenant, p.workload_id)) is None
    run = {} if p.run is None else {k: v for k, v in p.run.model_dump().items() if v is not None}
    await update(tx, msg, {"status": "accepted", **spec, **run, "submitted_at": msg.envelope.occurred_at.isoformat()})
    if tenant is not None and new:
        tx.zadd(store.workloads_key(tenant), p.workload_id, msg.envelope.occurred_at.timestamp())


async def rejected(msg: Message[WorkloadRejected], tx: Transaction) -> None:
    p = msg.payload
    await update(tx, msg, {"status": "rejected", "code": p.code, "reason": p.reason})


async def queued(msg: Message[WorkloadQueued], tx: Transaction) -> None:
    p = msg.payload

    def changes(doc: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "queued", "pending_code": p.code, "pending_reason": p.reason}
        if doc["status"] == "running":
            # Interrupted (spot preemption, GPU fault, drain): counted by cause.
            counts = dict(doc.get("interruptions", {}))
            counts[p.code] = counts.get(p.code, 0) + 1
            out["interruptions"] = counts
        return out

    await update(tx, msg, changes)


def slice_keys(m: Message[AllocationPlaced]) -> list[str]:
    return [store.host_key(s.host_id) for s in m.payload.gpus] + workload_keys(m)


async def placed(msg: Message[AllocationPlaced], tx: Transaction) -> None:
    p = msg.payload
    await allocation_placed(tx, p)
    if msg.envelope.tenant_id is not None:
        tx.hset(store.allocations_key(msg.envelope.tenant_id), p.allocation_id, p.workload_id)
    allocation = {
        "allocation_id": p.allocation_id,
        "sku": p.sku,
        "region": p.region,
        "gpus": p.gpu_count,
        "hosts": [s.host_id for s in p.gpus],
        "started_at": p.started_at.isoformat(),
        **{
            f: getattr(p, f)
            for f in ("gpu_milli", "cpu_milli", "memory_mib", "mig_profile")
            if getattr(p, f) is not None
        },
        "gpu_indices": [list(s.gpu_indices) for s in p.gpus],
    }
    # A new allocation: its processes and endpoint are yet to come.
    await update(tx, msg, {"allocation": allocation, "endpoint": None, "running_at": None})


async def started(msg: Message[WorkloadStarted], tx: Transaction) -> None:
    at = msg.payload.started_at.isoformat()

    def changes(doc: dict[str, Any]) -> dict[str, Any]:
        first = {} if "first_started_at" in doc else {"first_started_at": at}
        return {"status": "running", "pending_code": "", "pending_reason": "", "started_at": at, **first}

    await update(tx, msg, changes)


async def ended(msg: Message[WorkloadEnded], tx: Transaction) -> None:
    p = msg.payload
    changes: dict[str, Any] = {
        "status": "ended",
        "outcome": p.outcome,
        "reason": p.reason,
        "ended_at": p.ended_at.isoformat(),
        "endpoint": None,
    }
    if p.exit_code is not None:
        changes["exit_code"] = p.exit_code
    if p.exit_code and p.host_id:
        changes["failed_host"] = p.host_id
    await update(tx, msg, changes)


def _current(doc: dict[str, Any], allocation_id: str) -> bool:
    return (doc.get("allocation") or {}).get("allocation_id") == allocation_id and doc["status"] == "running"


async def task_running(msg: Message[TaskRunning], tx: Transaction) -> None:
    p = msg.payload
    if p.rank != 0:
        return

    def changes(doc: dict[str, Any]) -> dict[str, Any]:
        return {"running_at": p.running_at.isoformat()} if _current(doc, p.allocation_id) else {}

    await update(tx, msg, changes)


async def endpoint_ready(msg: Message[EndpointReady], tx: Transaction) -> None:
    p = msg.payload
    endpoint = {"address": p.address, "port": p.port, "host_id": p.host_id, "url": f"http://{p.address}:{p.port}"}

    def changes(doc: dict[str, Any]) -> dict[str, Any]:
        return {"endpoint": endpoint} if _current(doc, p.allocation_id) else {}

    await update(tx, msg, changes)


async def charged(msg: Message[AllocationCharged], tx: Transaction) -> None:
    p = msg.payload
    charge = {
        "allocation_id": p.allocation_id,
        "gpu_seconds": p.gpu_seconds,
        "minimum_gpu_seconds": p.minimum_gpu_seconds,
        "amount": str(p.amount),
        "currency": p.currency,
    }
    await update(tx, msg, {"charge": charge})


SUBSCRIPTIONS: list[tuple[type[Any], Any, Any]] = [
    (WorkloadAccepted, accepted, workload_keys),
    (WorkloadRejected, rejected, workload_keys),
    (WorkloadQueued, queued, workload_keys),
    (AllocationPlaced, placed, slice_keys),
    (WorkloadStarted, started, workload_keys),
    (WorkloadEnded, ended, workload_keys),
    (AllocationCharged, charged, workload_keys),
    (TaskRunning, task_running, workload_keys),
    (EndpointReady, endpoint_ready, workload_keys),
]
