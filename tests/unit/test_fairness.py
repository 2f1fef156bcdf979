"""Queue order and heads (minicloud_scheduling.fairness): pure, no Redis."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from minicloud_scheduling.fairness import can_head, competes, fair_order
from minicloud_scheduling.state import queue_score

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass(frozen=True)
class W:
    workload_id: str
    tenant_id: str
    gpus: int = 8
    sku: str | None = "h100-80gb-sxm"
    region: str | None = "eu-1"
    priority: int = 100
    price_class: str = "on_demand"
    minute: int = 0
    skus: tuple[str, ...] | None = None

    @property
    def accepts(self) -> frozenset[str] | None:
        if self.sku is not None:
            return frozenset((self.sku,))
        return frozenset(self.skus) if self.skus else None

    @property
    def score(self) -> float:
        return queue_score(self.priority, T0 + timedelta(minutes=self.minute), self.price_class)


def order(ws: list[W], held: dict[str, int] | None = None) -> list[str]:
    return [w.workload_id for w in fair_order(ws, {w.workload_id: w.score for w in ws}, held or {})]


def test_a_tenant_with_a_long_queue_takes_turns_with_the_others() -> None:
    b = [W(f"b{i}", "beta", minute=i) for i in range(4)]  # beta queued four jobs first
    a = W("a0", "acme", minute=10)
    assert order([*b, a]) == ["b0", "a0", "b1", "b2", "b3"]


def test_a_tenant_holding_gpus_goes_after_one_holding_none() -> None:
    ws = [W("b0", "beta", minute=0), W("a0", "acme", minute=5)]
    assert order(ws, {"beta": 16}) == ["a0", "b0"]
    assert order(ws, {}) == ["b0", "a0"]  # equal shares: first come, first served


def test_class_and_priority_come_before_fair_share() -> None:
    ws = [
        W("spot", "acme", price_class="spot"),
        W("low", "acme", priority=50),
        W("high", "beta", priority=500, minute=9),
        W("res", "beta", price_class="reserved", minute=9),
    ]
    assert order(ws, {"beta": 1000}) == ["res", "high", "low", "spot"]


def test_within_a_tenant_the_queue_stays_first_come_first_served() -> None:
    ws = [W(f"a{i}", "acme", minute=10 - i) for i in range(5)]
    assert order(ws) == ["a4", "a3", "a2", "a1", "a0"]


def test_a_head_holds_back_only_work_for_the_same_gpus() -> None:
    head = W("h", "beta", sku="h200-141gb-sxm", region="us-1")
    assert competes(head, W("same", "acme", sku="h200-141gb-sxm", region="us-1"))
    assert competes(head, W("any-region", "acme", sku="h200-141gb-sxm", region=None))
    assert competes(head, W("any-sku", "acme", sku=None, region="us-1"))
    assert not competes(head, W("other-region", "acme", sku="h200-141gb-sxm", region="eu-1"))
    assert not competes(head, W("other-sku", "acme", sku="a100-80gb-sxm", region="us-1"))
    # A head that takes any SKU holds back only work that takes any SKU too.
    anything = W("any", "beta", sku=None, region=None)
    assert not competes(anything, W("h100", "acme", sku="h100-80gb-sxm", region="eu-1"))
    assert competes(anything, W("any2", "acme", sku=None, region="eu-1"))


def test_work_the_fleet_cannot_hold_or_its_tenant_may_not_run_is_never_a_head() -> None:
    codes = ("capacity", "topology", "no_such_capacity", "too_large", "quota", "budget", "reservation")
    assert [c for c in codes if can_head(c)] == [
        "capacity",
        "topology",
    ]


def test_work_that_accepts_a_set_of_skus_competes_with_heads_of_any_of_them() -> None:
    h200_head = W("h200-head", "acme", sku="h200-141gb-sxm", region="us-1")
    either = W("either", "beta", sku=None, skus=("h100-80gb-sxm", "h200-141gb-sxm"), region="us-1")
    assert competes(h200_head, either)  # it could take the GPUs the head waits for
    assert not competes(W("a100-head", "acme", sku="a100-80gb-sxm", region="us-1"), either)
    assert competes(either, W("h100", "acme", sku="h100-80gb-sxm", region="us-1"))  # a set head holds its SKUs
    assert not competes(either, W("a100", "acme", sku="a100-80gb-sxm", region="us-1"))
