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


def test_the_rules_are_valid() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout


def test_the_rules_fire_when_they_should_and_not_otherwise() -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_runbook_entry() -> None:
    alerts = re.findall(r"^\s*- alert: (\w+)", (RULES / "alerts.yml").read_text(), re.M)
    runbooks = re.findall(r'runbook: "docs/operations.md#(\w+)"', (RULES / "alerts.yml").read_text())
    headings = {h.strip().lower() for h in re.findall(r"^### (\w+)", OPERATIONS.read_text(), re.M)}
    assert len(alerts) == 5
    assert [a.lower() for a in alerts] == runbooks  # each alert links its own entry
    assert set(runbooks) <= headings, sorted(set(runbooks) - headings)
