"""P01, the runtime's exactly-once state machine, on the in-memory substrate: the same
machine as ``tests/integration/test_runtime_stateful.py`` (which runs it on Redis),
with fakeredis running the commit, read and trim scripts."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from structlog.testing import capture_logs

from tests.integration.test_runtime_stateful import RuntimeMachine


def test_runtime_state_machine_p01_in_memory() -> None:
    with capture_logs():  # the machine's simulated crashes log; whatever a test before configured
        run_state_machine_as_test(
            lambda: RuntimeMachine(None),
            settings=settings(
                max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            ),
        )
