"""The demo's scenario and report, without a cloud: what the month holds, and that the
report is drawn from a run's record (numbers, plots, page)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from minicloud_demo import report, scenario
from minicloud_demo.sim import Record

START = datetime(2026, 12, 1, tzinfo=UTC)


def test_the_scenario_is_a_month_of_the_five_layers_of_model_work() -> None:
    plan = scenario.build(START)
    assert plan == scenario.build(START)  # one seed, one month
    assert plan != scenario.build(START, seed=8)
    assert {j.kind for j in plan.jobs} == {"pre_training", "fine_tuning", "training", "inference", "dev"}
    assert {j.price_class for j in plan.jobs} == {"on_demand", "spot", "reserved"}
    assert {h.sku for h in plan.hosts} == {"h100-80gb-sxm", "h200-141gb-sxm", "a100-80gb-sxm", "l40s-48gb-pcie"}
    assert {h.region for h in plan.hosts} == {"eu-1", "us-1"}
    assert {h.gpus for h in plan.hosts} == {1, 8}
    assert all(0 <= j.at < 31 * scenario.DAY for j in plan.jobs)
    assert [j.at for j in plan.jobs] == sorted(j.at for j in plan.jobs)
    kinds = {e.kind for e in plan.events}
    assert kinds == {"fault", "repair", "drain", "undrain"}
    # The price cut: mid-month, 20 % on average, 55 % at most.
    assert plan.price_cut_at == START + timedelta(days=15.5)
    cuts = list(plan.price_cuts.values())
    assert sum(cuts) / len(cuts) == 20
    assert max(cuts) == 55
    # A tenant on a small hard budget, to be stopped by it.
    assert any(t.hard_budget is not None for t in plan.tenants)


def test_scale_and_load_size_the_month() -> None:
    small = scenario.build(START, days=2, scale=0.25)
    big = scenario.build(START, days=2, scale=1, load=2)
    assert len(small.hosts) < len(big.hosts)
    assert len(small.jobs) < len(big.jobs)


def _record() -> Record:
    r = Record(
        start=START.isoformat(),
        end=(START + timedelta(days=2)).isoformat(),
        factor=1000,
        hosts=2,
        gpus={"h100-80gb-sxm": 8, "a100-80gb-sxm": 8},
        price_cut_at=(START + timedelta(days=1)).isoformat(),
        price_cuts={"h100-80gb-sxm/on_demand": 20},
    )
    for h in range(48):
        at = START + timedelta(hours=h)
        r.samples.append(
            {
                "at": at.isoformat(),
                "capacity": {
                    "h100-80gb-sxm|eu-1": {"total": 8, "allocated": 8 if h >= 24 else 4, "faulted": 0, "draining": 0},
                    "a100-80gb-sxm|us-1": {"total": 8, "allocated": 2, "faulted": 0, "draining": 0},
                },
                "queued": {},
            }
        )
    r.workloads = [
        {
            "tenant": "acme",
            "workload_id": "wl-1",
            "kind": "training",
            "status": "ended",
            "outcome": "completed",
            "submitted_at": START.isoformat(),
            "first_started_at": (START + timedelta(hours=3)).isoformat(),
            "interruptions": {"preempted": 2},
            "sku": "h100-80gb-sxm",
            "region": "eu-1",
            "gpus_per_node": 4,
            "nodes": 1,
        },
        {  # waits from hour 23 to 26 for 8 GPUs: 4 free at 23, none after
            "tenant": "acme",
            "workload_id": "wl-3",
            "kind": "training",
            "status": "running",
            "submitted_at": (START + timedelta(hours=23)).isoformat(),
            "first_started_at": (START + timedelta(hours=26)).isoformat(),
            "sku": "h100-80gb-sxm",
            "region": None,
            "gpus_per_node": 8,
            "nodes": 1,
        },
        {"tenant": "acme", "workload_id": "wl-2", "kind": "dev", "status": "rejected", "code": "budget"},
    ]
    line = {
        "kind": "usage",
        "sku": "h100-80gb-sxm",
        "price_class": "spot",
        "catalog_version": "2026-01",
        "gpu_seconds": 7200,
        "amount": "2.50",
    }
    r.invoices = [
        {
            "tenant": "acme",
            "invoice_id": "inv-acme-2026-12",
            "status": "final",
            "currency": "USD",
            "total": "2.50",
            "lines": [line],
        },
    ]
    r.events = [
        {"at": START.isoformat(), "kind": "fault"},
        {"at": START.isoformat(), "kind": "budget", "tenant": "acme"},
    ]
    r.submitted = 2
    return r


def test_the_report_is_drawn_from_the_record(tmp_path: Path) -> None:
    s = report.write(_record(), tmp_path)
    assert s["revenue"] == "2.50"
    assert s["gpu_hours_billed"] == "2.0"
    assert s["revenue_by_sku_class"] == {"h100-80gb-sxm/spot": "2.50"}
    assert s["mean_utilization"] == {"a100-80gb-sxm": 0.25, "h100-80gb-sxm": 0.75}
    assert s["queue_wait_hours_p50"] == {"training": 3.0}
    # wl-1 waited 3 sampled hours with its 4 GPUs free; wl-3 3 hours without its 8.
    assert (s["waiting_hours"], s["waiting_hours_with_free_gpus"], s["waited_over_an_hour"]) == (6, 3, 2)
    assert s["waiting_hours_with_free_gpus_share"] == 0.5
    assert (s["spot_preempted"], s["faults"], s["budget_stops"], s["rejected"]) == (2, 1, ["acme"], {"budget": 1})
    for png in ("utilization.png", "queue_waits.png", "revenue.png", "invoices.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text()
    assert all(f"src='{png}'" in page for png in ("utilization.png", "revenue.png"))
    assert "inv-acme-2026-12" in page
    assert json.loads((tmp_path / "summary.json").read_text())["revenue"] == "2.50"
    assert "2.50 USD" in (tmp_path / "summary.txt").read_text()
    assert "with enough free GPUs in their pool: 3 (50%)" in (tmp_path / "summary.txt").read_text()
