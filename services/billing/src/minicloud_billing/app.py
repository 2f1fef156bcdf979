"""The billing service: usage records in, charges, budgets and invoices out — the wiring.

Each usage record is rated inside the runtime's atomic step, so its pieces reach their
invoice lines exactly once (records are deduplicated by their event id, which metering
derives from the usage id), and the tenant's account, the allocation's totals and the
invoice change together or not at all.

Ownership: billing learns which tenant owns an allocation from scheduling's
``AllocationPlaced``. A usage record for a tenant that does not own the allocation is
refused (dead-lettered with the reason, charged to nobody). A record for an
allocation billing has not seen placed yet (the placement travels on another stream)
is parked and rated — or refused — when the placement arrives.

Where things are: ``records`` (typed records), ``store`` (keys and reads), ``charges``
(an allocation's pieces and minimum), ``accounts`` (budgets and credit), ``invoices``
(lines, commitments, closing, snapshots), ``actions`` (staged changes), ``handlers``
(one per message type), ``queries`` (read-only questions); the rating rules shared
with the gateway's quotes are in ``minicloud_shared.pricing`` (docs/billing.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from minicloud_billing import handlers, store
from minicloud_billing.actions import CatalogCache
from minicloud_billing.handlers import Deps
from minicloud_billing.metrics import BillingMetrics
from minicloud_shared.contracts import Message, Payload
from minicloud_shared.contracts.billing import (
    AddCredit,
    BillingTick,
    PublishPriceCatalog,
    SetAccount,
    SetCommitment,
)
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.contracts.scheduling import AllocationPlaced
from minicloud_shared.contracts.topology import BILLING_EVENTS
from minicloud_shared.pricing import month_of
from minicloud_shared.runtime import ServiceRuntime

SERVICE = store.SERVICE
HOT_BATCH = 500  # usage records and placements read and committed at once (the hot path)

Handler = Callable[..., Awaitable[None]]  # (message, transaction, deps=Deps)


def placement_keys(m: Message[AllocationPlaced]) -> list[str]:
    a = m.payload.allocation_id
    return [store.alloc_key(a), store.parked_key(a), store.WATERMARK]


def usage_keys(m: Message[UsageRecorded]) -> list[str]:
    e, tenant = m.payload, m.envelope.tenant_id or ""
    return [
        store.alloc_key(e.allocation_id),
        store.account_key(tenant),
        store.CATALOG,
        store.invoice_key(tenant, month_of(e.start)),
        store.invoice_key(tenant, month_of(e.end)),
    ]


# What billing consumes: the handler, the keys read ahead for a batch, the batch size.
SUBSCRIPTIONS: list[tuple[type[Payload], Handler, Callable[[Message[Any]], Sequence[str]] | None, int | None]] = [
    (AllocationPlaced, handlers.on_placed, placement_keys, HOT_BATCH),
    (UsageRecorded, handlers.on_usage, usage_keys, HOT_BATCH),
    (PublishPriceCatalog, handlers.on_publish, None, None),
    (SetAccount, handlers.on_set_account, None, None),
    (AddCredit, handlers.on_add_credit, None, None),
    (SetCommitment, handlers.on_set_commitment, None, None),
    (BillingTick, handlers.on_tick, None, None),
]


def build(runtime: ServiceRuntime, catalogs: CatalogCache | None = None) -> None:
    """Register the billing service's handlers on ``runtime``."""
    deps = Deps(
        catalogs or CatalogCache(),
        runtime.settings.invoice_grace_s,
        runtime.consumer_name,
        BillingMetrics(runtime.metrics.registry),
    )
    runtime.own_streams(BILLING_EVENTS)
    for payload_type, handler, prefetch, batch_size in SUBSCRIPTIONS:
        runtime.add_route(payload_type, partial(handler, deps=deps), prefetch=prefetch, batch_size=batch_size)
    runtime.every(runtime.settings.tick_s, lambda now: BillingTick(at=now))
