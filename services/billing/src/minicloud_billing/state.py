"""Billing's keys and record shapes (all under ``mc:billing:``)."""

from __future__ import annotations

from typing import Any

CATALOG = "mc:billing:catalog"  # versioned record: every catalog version published after the base one
DRAFTS = "mc:billing:drafts"  # "tenant|month" of every draft invoice -> when the month ends (epoch s)
BLOCKED = "mc:billing:blocked"  # tenants at a hard limit
TENANTS = "mc:billing:tenants"  # every tenant billing has seen
DIRTY = "mc:billing:dirty"  # "tenant|month" of invoices changed since their last InvoiceUpdated
# {"placed_month": "YYYY-MM"}: the month of the latest placement billing has read. Once it
# is past a month, all that month's allocations are known (scheduling's stream is read in
# order). Written once a month, not per placement: no hot key on the placement path.
WATERMARK = "mc:billing:watermark"


def open_key(tenant: str) -> str:
    """Set: the tenant's allocations whose usage is not rated in full yet."""
    return f"mc:billing:open:{tenant}"


def alloc_key(allocation_id: str) -> str:
    """An allocation as billing knows it: owner, what it is, what it has been charged."""
    return f"mc:billing:alloc:{allocation_id}"


def invoice_key(tenant: str, month: str) -> str:
    """A tenant's invoice for a month (a draft until the month is closed)."""
    return f"mc:billing:invoice:{tenant}:{month}"


def why_key(tenant: str, month: str) -> str:
    """Hash: ``<line id>|<allocation id>`` -> GPU-seconds (and ``...|n`` -> records) behind each line."""
    return f"mc:billing:why:{tenant}:{month}"


def usage_key(allocation_id: str) -> str:
    """Hash: usage id -> ``<month>|<line id>|<GPU-seconds>`` for each piece billed of it."""
    return f"mc:billing:usage:{allocation_id}"


def parked_key(allocation_id: str) -> str:
    """Usage records that arrived before their allocation's placement: {records: [...]}."""
    return f"mc:billing:parked:{allocation_id}"


def account_key(tenant: str) -> str:
    return f"mc:billing:account:{tenant}"


def new_account(tenant: str, currency: str) -> dict[str, Any]:
    """A tenant billing has no account for: postpaid, no limits, until an operator sets one."""
    return {
        "tenant": tenant,
        "funded": False,  # credit and limits are enforced once an operator set them
        "currency": currency,
        "credits": "0",
        "credit_limit": "0",
        "soft_budget": None,
        "hard_budget": None,
        "charged": "0",
        "state": "ok",
        "cause": None,
        "alerted": "",
        "commitments": {},
        "references": [],
    }
