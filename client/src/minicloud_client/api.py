"""Every operation of the public API as a ``Request`` (docs/gateway.md; the OpenAPI
document in docs/openapi.json). Send one with ``Client.call`` or ``AsyncClient.call``."""

from __future__ import annotations

import urllib.parse
from decimal import Decimal
from typing import Any

from minicloud_client.transport import Request


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _idem(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


# --- public ------------------------------------------------------------------------------


def skus() -> Request:
    return Request("GET", "/v1/skus", auth=False)


def prices() -> Request:
    return Request("GET", "/v1/prices", auth=False)


def price_versions() -> Request:
    return Request("GET", "/v1/prices/versions", auth=False)


def availability() -> Request:
    return Request("GET", "/v1/availability", auth=False)


def regions() -> Request:
    return Request("GET", "/v1/regions", auth=False)


# --- workloads (a tenant's) --------------------------------------------------------------


def submit_workload(
    *,
    name: str,
    kind: str,
    gpus_per_node: int,
    nodes: int = 1,
    sku: str | None = None,
    region: str | None = None,
    price_class: str = "on_demand",
    priority: int = 100,
    max_duration_s: int = 86_400,
    idempotency_key: str,
    image: str | None = None,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
    skus: list[str] | None = None,
    gpu_milli: int | None = None,
    cpu_milli: int | None = None,
    memory_mib: int | None = None,
    mig_profile: str | None = None,
) -> Request:
    """Submit a workload; the Idempotency-Key names it (a retry with it is the same
    submission). ``image`` and ``command`` (with ``env`` and ``port``): what its hosts
    run; without them the tenant runs the work and completes it. ``skus``: several
    acceptable GPU models instead of one ``sku``. ``gpu_milli``: a share of one GPU
    (with ``gpus_per_node`` 0); ``cpu_milli`` and ``memory_mib``: per node (required for
    CPU-only work)."""
    run = {"image": image, "command": command, "env": env, "port": port}
    body: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "sku": sku,
        **({"skus": skus} if skus else {}),
        "gpus_per_node": gpus_per_node,
        "nodes": nodes,
        "region": region,
        "price_class": price_class,
        "priority": priority,
        "max_duration_s": max_duration_s,
        **{k: v for k, v in run.items() if v is not None},
    }
    shape = {"gpu_milli": gpu_milli, "cpu_milli": cpu_milli, "memory_mib": memory_mib, "mig_profile": mig_profile}
    body.update({k: v for k, v in shape.items() if v is not None})
    return Request("POST", "/v1/workloads", body, headers=_idem(idempotency_key))


def workload_logs(workload_id: str, since: str = "0", limit: int | None = None) -> Request:
    """A workload's output lines after ``since`` (a line's id; "0": from the start)."""
    return Request("GET", f"/v1/workloads/{_q(workload_id)}/logs", params={"since": since, "limit": limit})


def workload(workload_id: str) -> Request:
    return Request("GET", f"/v1/workloads/{_q(workload_id)}")


def workload_trace(workload_id: str) -> Request:
    return Request("GET", f"/v1/workloads/{_q(workload_id)}/trace")


def workloads(limit: int | None = None, after: str | None = None) -> Request:
    return Request("GET", "/v1/workloads", params={"limit": limit, "after": after})


def complete_workload(workload_id: str) -> Request:
    return Request("POST", f"/v1/workloads/{_q(workload_id)}/complete")


def cancel_workload(workload_id: str) -> Request:
    return Request("POST", f"/v1/workloads/{_q(workload_id)}/cancel")


def quote(sku: str, gpus: int, hours: float, price_class: str = "on_demand", region: str = "*") -> Request:
    params = {"sku": sku, "gpus": gpus, "hours": hours, "price_class": price_class, "region": region}
    return Request("GET", "/v1/quote", params=params)


# --- money (a tenant's) ------------------------------------------------------------------


def invoices() -> Request:
    return Request("GET", "/v1/invoices")


def invoice(month: str) -> Request:
    return Request("GET", f"/v1/invoices/{_q(month)}")


def explain_line(month: str, line_id: str) -> Request:
    return Request("GET", f"/v1/invoices/{_q(month)}/lines/{_q(line_id)}")


def usage(from_month: str | None = None, to_month: str | None = None) -> Request:
    return Request("GET", "/v1/usage", params={"from": from_month, "to": to_month})


def budget() -> Request:
    return Request("GET", "/v1/budget")


def reservations() -> Request:
    """A tenant's reservations, or every tenant's for the operator."""
    return Request("GET", "/v1/reservations")


# --- the operator's ----------------------------------------------------------------------


def operation(operation_id: str) -> Request:
    return Request("GET", f"/v1/operations/{_q(operation_id)}")


def tenants() -> Request:
    return Request("GET", "/v1/tenants")


def create_tenant(tenant_id: str, name: str) -> Request:
    return Request("POST", "/v1/tenants", {"tenant_id": tenant_id, "name": name})


def set_limits(tenant_id: str, max_priority: int) -> Request:
    return Request("PUT", f"/v1/tenants/{_q(tenant_id)}/limits", {"max_priority": max_priority})


def keys(tenant_id: str) -> Request:
    return Request("GET", f"/v1/tenants/{_q(tenant_id)}/keys")


def issue_key(tenant_id: str) -> Request:
    return Request("POST", f"/v1/tenants/{_q(tenant_id)}/keys")


def revoke_key(tenant_id: str, key_id: str) -> Request:
    return Request("DELETE", f"/v1/tenants/{_q(tenant_id)}/keys/{_q(key_id)}")


def hosts(
    region: str | None = None,
    sku: str | None = None,
    state: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> Request:
    params = {"region": region, "sku": sku, "state": state, "limit": limit, "after": after}
    return Request("GET", "/v1/hosts", params=params)


def host(host_id: str) -> Request:
    return Request("GET", f"/v1/hosts/{_q(host_id)}")


def register_host(body: dict[str, Any], idempotency_key: str | None = None) -> Request:
    """``body``: host_id, region, zone, rack, nvlink_domain, sku, gpu_count (and
    optionally cpu_milli, memory_mib, gpu_mode)."""
    return Request("POST", "/v1/hosts", body, headers=_idem(idempotency_key))


def set_gpu_mode(
    host_id: str, mode: str, mig_layout: list[str] | None = None, idempotency_key: str | None = None
) -> Request:
    """Whole, shared or MIG GPUs (refused while work runs on the host)."""
    body: dict[str, Any] = {"gpu_mode": mode, **({"mig_layout": mig_layout} if mig_layout else {})}
    return Request("POST", f"/v1/hosts/{_q(host_id)}/gpu-mode", body, headers=_idem(idempotency_key))


def drain_host(host_id: str, reason: str = "", idempotency_key: str | None = None) -> Request:
    return Request("POST", f"/v1/hosts/{_q(host_id)}/drain", {"reason": reason}, headers=_idem(idempotency_key))


def undrain_host(host_id: str, idempotency_key: str | None = None) -> Request:
    return Request("POST", f"/v1/hosts/{_q(host_id)}/undrain", headers=_idem(idempotency_key))


def decommission_host(host_id: str, idempotency_key: str | None = None) -> Request:
    return Request("POST", f"/v1/hosts/{_q(host_id)}/decommission", headers=_idem(idempotency_key))


def report_fault(
    host_id: str, gpu_index: int, code: str, detail: str = "", idempotency_key: str | None = None
) -> Request:
    body = {"gpu_index": gpu_index, "code": code, "detail": detail}
    return Request("POST", f"/v1/hosts/{_q(host_id)}/faults", body, headers=_idem(idempotency_key))


def clear_fault(host_id: str, gpu_index: int, idempotency_key: str | None = None) -> Request:
    return Request("DELETE", f"/v1/hosts/{_q(host_id)}/faults/{gpu_index}", headers=_idem(idempotency_key))


def capacity() -> Request:
    return Request("GET", "/v1/capacity")


def publish_prices(
    version: str,
    effective_at: str,
    prices: list[dict[str, Any]],
    currency: str = "USD",
    idempotency_key: str | None = None,
) -> Request:
    """``prices``: rows of sku, region ("*" for all), price_class, per_gpu_hour."""
    body = {"version": version, "effective_at": effective_at, "currency": currency, "prices": prices}
    return Request("POST", "/v1/prices/versions", body, headers=_idem(idempotency_key))


def grant_reservation(body: dict[str, Any], idempotency_key: str | None = None) -> Request:
    """``body``: reservation_id, tenant_id, sku, region, gpus, starts_at, ends_at."""
    return Request("POST", "/v1/reservations", body, headers=_idem(idempotency_key))


def account(tenant_id: str) -> Request:
    return Request("GET", f"/v1/accounts/{_q(tenant_id)}")


def set_account(
    tenant_id: str,
    credit_limit: Decimal | str = "0",
    soft_budget: Decimal | str | None = None,
    hard_budget: Decimal | str | None = None,
    idempotency_key: str | None = None,
) -> Request:
    body = {
        "credit_limit": str(credit_limit),
        "soft_budget": None if soft_budget is None else str(soft_budget),
        "hard_budget": None if hard_budget is None else str(hard_budget),
    }
    return Request("PUT", f"/v1/accounts/{_q(tenant_id)}", body, headers=_idem(idempotency_key))


def add_credit(tenant_id: str, amount: Decimal | str, reference: str, idempotency_key: str | None = None) -> Request:
    body = {"amount": str(amount), "reference": reference}
    return Request("POST", f"/v1/accounts/{_q(tenant_id)}/credits", body, headers=_idem(idempotency_key))


def set_commitment(
    tenant_id: str, sku: str, gpu_hours_per_month: int, discount_pct: Decimal | str, idempotency_key: str | None = None
) -> Request:
    body = {"gpu_hours_per_month": gpu_hours_per_month, "discount_pct": str(discount_pct)}
    path = f"/v1/accounts/{_q(tenant_id)}/commitments/{_q(sku)}"
    return Request("PUT", path, body, headers=_idem(idempotency_key))
