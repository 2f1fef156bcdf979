"""Fault injection at the runtime's crash points, for reliability tests.

Off unless configured. ``MINICLOUD_FAILPOINTS`` (or the ``spec`` argument) reads like
``after_commit_before_ack=0.01,before_commit=0.01,seed=7,action=kill``:

- ``before_commit``: the handlers ran, nothing was written (R03: crash before the effect);
- ``after_commit_before_ack``: effects and dedup marks are written, the XACK is left
  out (R02: crash after the effect, before the ack);
- ``action=raise`` (default) makes the consumer abandon the batch as a dead process
  would, leaving its entries pending; ``action=kill`` sends SIGKILL to the process.
"""

from __future__ import annotations

import os
import random
import signal

POINTS = ("before_commit", "after_commit_before_ack")


class SimulatedCrash(Exception):
    """The consumer 'dies' here: whatever it read stays pending for the reclaimer."""


class Failpoints:
    def __init__(self, spec: str | None = None) -> None:
        self.rates: dict[str, float] = {}
        self.action = "raise"
        self.hits: dict[str, int] = dict.fromkeys(POINTS, 0)
        seed: int | None = None
        for part in (spec or "").split(","):
            name, _, value = part.strip().partition("=")
            if not name:
                continue
            if name == "seed":
                seed = int(value)
            elif name == "action":
                if value not in ("raise", "kill"):
                    raise ValueError(f"failpoint action must be raise or kill, not {value!r}")
                self.action = value
            elif name in POINTS:
                self.rates[name] = float(value)
            else:
                raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(POINTS)}")
        self._rng = random.Random(seed)
        self._armed: set[str] = set()

    @classmethod
    def from_env(cls) -> Failpoints:
        return cls(os.environ.get("MINICLOUD_FAILPOINTS"))

    @property
    def active(self) -> bool:
        return bool(self.rates or self._armed)

    def arm(self, point: str) -> None:
        """Make the next pass through ``point`` fire, once (deterministic tests)."""
        if point not in POINTS:
            raise ValueError(f"unknown failpoint {point!r}")
        self._armed.add(point)

    def fires(self, point: str) -> bool:
        if point in self._armed:
            self._armed.discard(point)
            self.hits[point] += 1
            return True
        rate = self.rates.get(point, 0.0)
        if rate <= 0 or self._rng.random() >= rate:
            return False
        self.hits[point] += 1
        return True

    def crash(self, point: str) -> None:
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise SimulatedCrash(point)
