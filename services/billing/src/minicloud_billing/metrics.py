"""Billing's own Prometheus metrics, beside the runtime's (served by the same
``/metrics``; docs/operations.md): what is rated onto invoices, per SKU and price class.

Counted when the rating's commit lands, so a batch run again after a refused commit
counts once. Amounts are floats here, for dashboards: the invoices hold the exact
Decimal amounts. A counter only grows, so an adjustment (usage credited back) counts
in its own ``kind``: net = usage + minimum - adjustment. Budget stops and invoices
finalized are events: ``minicloud_runtime_events_emitted_total{type=...}``."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter

KINDS = ("usage", "minimum", "adjustment")


class BillingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.gpu_seconds = Counter(
            "minicloud_billing_gpu_seconds",
            "GPU-seconds rated onto invoices, by SKU, price class and kind (usage, minimum, adjustment)",
            ["sku", "price_class", "kind"],
            registry=r,
        )
        self.revenue = Counter(
            "minicloud_billing_charges",
            "Charges rated onto invoices before rounding, in the catalog's currency, by SKU, price class and kind",
            ["sku", "price_class", "kind", "currency"],
            registry=r,
        )

    def rated(self, sku: str, price_class: str, kind: str, gpu_seconds: int, amount: Decimal, currency: str) -> None:
        self.gpu_seconds.labels(sku, price_class, kind).inc(abs(gpu_seconds))
        self.revenue.labels(sku, price_class, kind, currency).inc(float(abs(amount)))
