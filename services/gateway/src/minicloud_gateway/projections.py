"""The gateway's read side: projections of the services' events into its own keys.

``mc:gateway:wl:<tenant>:<workload>`` holds a workload as a tenant sees it: status,
pending reason, allocation and when things happened; ``mc:gateway:wls:<tenant>`` lists a
tenant's workloads by submission order (for pagination). Reads never touch another
service's keys.
"""

from __future__ import annotations

from typing import Any

from minicloud_shared.contracts import Message
from minicloud_shared.contracts.billing import PriceCatalogPublished
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    WorkloadAccepted,
    WorkloadEnded,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadStarted,
)
from minicloud_shared.runtime import ServiceRuntime, Transaction

CATALOG = "mc:gateway:catalog"  # catalog versions published after the base list, as billing accepted them


def workload_key(tenant: str, workload_id: str) -> str:
    return f"mc:gateway:wl:{tenant}:{workload_id}"


def workloads_key(tenant: str) -> str:
    return f"mc:gateway:wls:{tenant}"


def build_projections(runtime: ServiceRuntime) -> None:
    @runtime.on(PriceCatalogPublished)
    async def catalog(msg: Message[PriceCatalogPublished], tx: Transaction) -> None:
        p = msg.payload
        doc = dict(await tx.get(CATALOG) or {"versions": []})
        if any(v["version"] == p.version for v in doc["versions"]):
            return
        version = {
            "version": p.version,
            "effective_at": p.effective_at.isoformat(),
            "currency": p.currency,
            "prices": [[r.sku, r.region, r.price_class, str(r.per_gpu_hour)] for r in p.prices],
        }
        await tx.put(CATALOG, {"versions": [*doc["versions"], version]})

    async def update(tx: Transaction, msg: Message[Any], changes: dict[str, Any]) -> None:
        tenant = msg.envelope.tenant_id
        if tenant is None:
            return
        key = workload_key(tenant, msg.payload.workload_id)
        doc = dict(await tx.get(key) or {"workload_id": msg.payload.workload_id, "status": "submitted"})
        # Events of one workload can arrive in any order across redeliveries: a later
        # status never goes back (queued after started is old news).
        order = {"submitted": 0, "accepted": 1, "queued": 2, "rejected": 9, "running": 3, "ended": 9}
        new = changes.get("status")
        if (
            new is not None
            and order.get(new, 0) < order.get(doc["status"], 0)
            and not (
                doc["status"] == "running" and new == "queued"  # requeued after a fault or drain
            )
        ):
            changes = {k: v for k, v in changes.items() if k != "status"}
        doc.update(changes)
        await tx.put(key, doc)

    @runtime.on(WorkloadAccepted)
    async def accepted(msg: Message[WorkloadAccepted], tx: Transaction) -> None:
        p = msg.payload
        spec = {k: getattr(p, k) for k in ("name", "kind", "sku", "gpus_per_node", "nodes", "region", "price_class")}
        await update(tx, msg, {"status": "accepted", **spec, "submitted_at": msg.envelope.occurred_at.isoformat()})
        tenant = msg.envelope.tenant_id
        if tenant is not None:
            tx.zadd(workloads_key(tenant), p.workload_id, msg.envelope.occurred_at.timestamp())

    @runtime.on(WorkloadRejected)
    async def rejected(msg: Message[WorkloadRejected], tx: Transaction) -> None:
        p = msg.payload
        await update(tx, msg, {"status": "rejected", "code": p.code, "reason": p.reason})

    @runtime.on(WorkloadQueued)
    async def queued(msg: Message[WorkloadQueued], tx: Transaction) -> None:
        p = msg.payload
        await update(tx, msg, {"status": "queued", "pending_code": p.code, "pending_reason": p.reason})

    @runtime.on(AllocationPlaced)
    async def placed(msg: Message[AllocationPlaced], tx: Transaction) -> None:
        p = msg.payload
        allocation = {
            "allocation_id": p.allocation_id,
            "sku": p.sku,
            "region": p.region,
            "gpus": p.gpu_count,
            "hosts": [s.host_id for s in p.gpus],
            "started_at": p.started_at.isoformat(),
        }
        await update(tx, msg, {"allocation": allocation})

    @runtime.on(WorkloadStarted)
    async def started(msg: Message[WorkloadStarted], tx: Transaction) -> None:
        await update(
            tx,
            msg,
            {
                "status": "running",
                "pending_code": "",
                "pending_reason": "",
                "started_at": msg.payload.started_at.isoformat(),
            },
        )

    @runtime.on(WorkloadEnded)
    async def ended(msg: Message[WorkloadEnded], tx: Transaction) -> None:
        p = msg.payload
        await update(
            tx, msg, {"status": "ended", "outcome": p.outcome, "reason": p.reason, "ended_at": p.ended_at.isoformat()}
        )
