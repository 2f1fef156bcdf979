"""Injectable time.

Every service takes a :class:`Clock` instead of calling ``datetime.now()``: tests
freeze or step it, the demo runs an accelerated one. All instants are timezone-aware
UTC datetimes.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """A source of the current instant and a way to wait in that clock's time."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AcceleratedClock:
    """Simulated time running ``factor`` times faster than real time from ``start``.

    Without ``anchor``, real elapsed time is taken from a monotonic clock from this
    object's creation, so the simulation never jumps backwards when the wall clock is
    adjusted. With ``anchor`` (a Unix time: the real instant the simulation is at
    ``start``), it is taken from the wall clock, so that several processes — the
    services of a demo, started seconds apart — share one simulated time.
    ``factor=720`` runs a 30-day month in one hour; ``sleep(3600)`` then waits five
    real seconds.
    """

    def __init__(self, start: datetime, factor: float, anchor: float | None = None) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if factor <= 0:
            raise ValueError("factor must be positive")
        self._start = start.astimezone(UTC)
        self._factor = factor
        self._wall = anchor is not None
        self._t0 = anchor if anchor is not None else time.monotonic()

    @property
    def factor(self) -> float:
        return self._factor

    def now(self) -> datetime:
        real = (time.time() if self._wall else time.monotonic()) - self._t0
        return self._start + timedelta(seconds=real * self._factor)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._factor)


class ManualClock:
    """A clock that moves only when told to: for tests.

    ``sleep`` advances the clock instead of waiting, so code under test that sleeps in
    clock time runs instantly and deterministically.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime(2026, 1, 1, tzinfo=UTC)).astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, instant: datetime) -> None:
        if instant.tzinfo is None:
            raise ValueError("instant must be timezone-aware")
        self._now = instant.astimezone(UTC)

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


def clock_from_spec(spec: str) -> Clock:
    """Build a clock from a settings string.

    ``system`` (the default) or ``accelerated:<factor>[@<ISO start>[~<Unix time>]]``,
    for example ``accelerated:720@2026-11-01T00:00:00Z`` (from this process's start) or
    ``accelerated:720@2026-11-01T00:00:00Z~1795000000`` (``start`` at that real
    instant, shared by every process given the same spec).
    """
    spec = spec.strip()
    if spec in ("", "system"):
        return SystemClock()
    if spec.startswith("accelerated:"):
        rest = spec.removeprefix("accelerated:")
        factor_s, _, start_s = rest.partition("@")
        start_s, _, anchor_s = start_s.partition("~")
        try:
            factor = float(factor_s)
            start = datetime.fromisoformat(start_s) if start_s else datetime.now(UTC)
            anchor = float(anchor_s) if anchor_s else None
        except ValueError as exc:
            raise ValueError(f"bad clock spec {spec!r}: {exc}") from exc
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        return AcceleratedClock(start, factor, anchor)
    raise ValueError(f"bad clock spec {spec!r}: expected 'system' or 'accelerated:<factor>[@<start>[~<anchor>]]'")
