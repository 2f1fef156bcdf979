"""The alert rules Prometheus loads (infra/prometheus/alerts.yml): valid, unit-tested
with promtool against series that must and must not fire them, and every alert has a
runbook entry in docs/operations.md."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "infra" / "prometheus"
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        why = "promtool is missing (Debian's prometheus package: make deps)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{why}, and CI=true", pytrace=False)
        pytest.skip(why)
    return found


def _promtool_in_rules(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([_promtool(), *args], cwd=RULES, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_rules_are_valid() -> None:
    done = _promtool_in_rules("check", "rules", "alerts.yml")
    assert "SUCCESS: 6 rules found" in done.stdout


def test_the_rules_fire_when_they_should_and_not_otherwise() -> None:
    done = _promtool_in_rules("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_runbook_entry() -> None:
    alerts = re.findall(r"^\s*- alert: (\w+)", (RULES / "alerts.yml").read_text(), re.M)
    runbooks = re.findall(r'runbook: "docs/operations.md#(\w+)"', (RULES / "alerts.yml").read_text())
    headings = {h.strip().lower() for h in re.findall(r"^### (\w+)", OPERATIONS.read_text(), re.M)}
    assert len(alerts) == 6
    assert [a.lower() for a in alerts] == runbooks  # each alert links its own entry
    assert set(runbooks) <= headings, sorted(set(runbooks) - headings)


def test_the_stack_configuration_is_valid_and_loads_these_rules() -> None:
    done = _promtool_in_rules("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in done.stdout


def test_what_services_expose_passes_promtools_metric_lint() -> None:
    """The exposition of the runtime and of the gateway, every series present, passes
    ``promtool check metrics`` (names, suffixes, units, help)."""
    from minicloud_gateway.metrics import HttpMetrics
    from minicloud_shared.runtime.metrics import RuntimeMetrics
    from minicloud_shared.runtime.routing import Subscription

    runtime = RuntimeMetrics("svc")
    sub = Subscription("mc.a.events", "svc", 100)
    runtime.declare([sub])
    runtime.batch_size.labels(sub.stream, sub.group).observe(10)
    runtime.handler_seconds.labels(sub.stream, sub.group).observe(0.01)
    runtime.commit_seconds.labels(sub.stream, sub.group).observe(0.002)
    runtime.lag.labels(sub.stream, sub.group).set(3)
    http = HttpMetrics()
    http.requests.labels("/v1/workloads/{workload_id}", "GET", "200").inc()
    http.seconds.labels("/v1/workloads/{workload_id}", "GET").observe(0.004)
    exposition = runtime.render() + http.render()
    done = subprocess.run([_promtool(), "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
