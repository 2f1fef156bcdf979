"""The gateway's read side, pure parts: which status a workload shows when its facts
arrive out of order."""

from __future__ import annotations

import itertools

import pytest

from minicloud_gateway.projections.workloads import STATUS_ORDER, advances


@pytest.mark.parametrize(
    ("current", "new", "moves"),
    [
        ("submitted", "accepted", True),
        ("accepted", "queued", True),
        ("queued", "running", True),
        ("running", "queued", True),  # requeued after a fault, a drain or preemption
        ("running", "ended", True),
        ("running", "accepted", False),  # an acceptance redelivered after the start
        ("queued", "accepted", False),
        ("ended", "running", False),  # a start redelivered after the end
        ("ended", "queued", False),
        ("rejected", "accepted", False),
    ],
)
def test_a_status_moves_forward_only_except_a_requeue(current: str, new: str, moves: bool) -> None:
    assert advances(current, new) is moves


def test_whatever_order_the_facts_of_a_run_arrive_in_the_last_status_is_ended() -> None:
    run = ["accepted", "queued", "running", "ended"]
    for order in itertools.permutations(run):
        shown = "submitted"
        for status in order:
            if advances(shown, status):
                shown = status
        assert shown == "ended", order
    assert set(STATUS_ORDER) == {"submitted", "accepted", "queued", "running", "rejected", "ended"}
