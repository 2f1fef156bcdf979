"""Clock, settings and fault-injection plans."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from minicloud_shared.clock import AcceleratedClock, ManualClock, SystemClock, clock_from_spec
from minicloud_shared.runtime import Failpoints, SimulatedCrash
from minicloud_shared.settings import Settings, default_consumer_name

T0 = datetime(2026, 11, 1, tzinfo=UTC)


async def test_manual_clock_sleep_advances_instead_of_waiting() -> None:
    clock = ManualClock(T0)
    started = time.monotonic()
    await clock.sleep(3600)
    assert clock.now() == datetime(2026, 11, 1, 1, tzinfo=UTC)
    assert time.monotonic() - started < 1


def test_accelerated_clock_runs_factor_times_faster() -> None:
    clock = AcceleratedClock(T0, factor=3600)  # an hour per second
    time.sleep(0.05)
    elapsed = (clock.now() - T0).total_seconds()
    assert 150 <= elapsed <= 3600  # 0.05 s real is 180 s simulated; generous for a loaded machine


def test_clock_specs() -> None:
    assert isinstance(clock_from_spec("system"), SystemClock)
    clock = clock_from_spec("accelerated:720@2026-11-01T00:00:00Z")
    assert isinstance(clock, AcceleratedClock)
    assert clock.factor == 720
    assert abs((clock.now() - T0).total_seconds()) < 720
    with pytest.raises(ValueError, match="bad clock spec"):
        clock_from_spec("warp")
    with pytest.raises(ValueError, match="bad clock spec"):
        clock_from_spec("accelerated:fast")
    with pytest.raises(ValueError, match="positive"):
        AcceleratedClock(T0, 0)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINICLOUD_REDIS_URL", "redis://elsewhere:6380/2")
    monkeypatch.setenv("MINICLOUD_RECLAIM_IDLE_MS", "90000")
    s = Settings(service="metering")
    assert s.redis_url == "redis://elsewhere:6380/2"
    assert s.reclaim_idle_ms == 90_000
    assert s.batch_size == 100  # a default that works locally
    monkeypatch.setenv("MINICLOUD_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="batch_size"):
        Settings(service="metering")


def test_consumer_names_are_unique_per_process_instance() -> None:
    names = {default_consumer_name("billing") for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith("billing-") for n in names)


def test_failpoint_specs() -> None:
    fp = Failpoints("before_commit=1.0,seed=1")
    assert fp.active
    assert fp.fires("before_commit")
    assert not fp.fires("after_commit_before_ack")
    with pytest.raises(SimulatedCrash):
        fp.crash("before_commit")
    assert not Failpoints(None).active
    with pytest.raises(ValueError, match="unknown failpoint"):
        Failpoints("after_lunch=0.5")
    with pytest.raises(ValueError, match="action"):
        Failpoints("action=explode")


def test_failpoints_are_reproducible_with_a_seed() -> None:
    fp1, fp2 = Failpoints("before_commit=0.3,seed=9"), Failpoints("before_commit=0.3,seed=9")
    first = [fp1.fires("before_commit") for _ in range(200)]
    assert first == [fp2.fires("before_commit") for _ in range(200)]
    assert 20 < sum(first) < 100  # about 30% fire


def test_armed_failpoint_fires_once() -> None:
    fp = Failpoints()
    fp.arm("after_commit_before_ack")
    assert fp.fires("after_commit_before_ack")
    assert not fp.fires("after_commit_before_ack")
    assert fp.hits["after_commit_before_ack"] == 1


def test_anchored_accelerated_clocks_agree_across_processes() -> None:
    """Two clocks from one anchored spec, made at different moments (as services start
    seconds apart), read the same simulated time; an anchor an hour ago at 24x is a day in."""
    anchor = time.time() - 3600
    spec = f"accelerated:24@2026-12-01T00:00:00Z~{anchor}"
    first = clock_from_spec(spec)
    time.sleep(0.05)
    second = clock_from_spec(spec)
    gap = abs((second.now() - first.now()).total_seconds())
    assert gap < 24 * 0.5  # the two reads are microseconds apart in real time
    day_in = (first.now() - datetime(2026, 12, 1, tzinfo=UTC)).total_seconds()
    assert 86_400 <= day_in <= 86_400 + 24 * 60
