"""Shared pieces of the benchmarks: results, medians, a Redis to measure on."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from minicloud_shared.logs import configure_logging
from minicloud_shared.testing.redis_server import NoRedis, RedisServer, acquire

RESULTS = Path(__file__).parent / "results"


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline: str | None = None  # name of the baseline result measured in the same run
    ratio: float | None = None  # value / baseline value
    runs: list[float] | None = None
    note: str = ""


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def with_ratio(result: Result, baseline: Result) -> Result:
    result.baseline = baseline.name
    result.ratio = round(result.value / baseline.value, 3) if baseline.value else None
    return result


def write(results: list[Result], path: Path | None = None) -> Path:
    path = path or RESULTS / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        row = asdict(r)
        rows.append({k: v for k, v in row.items() if v not in (None, "")} | {"baseline": r.baseline, "ratio": r.ratio})
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return path


def table(results: list[Result]) -> str:
    lines = [f"{'benchmark':44} {'median':>14}  {'unit':10} {'ratio':>7}  baseline"]
    for r in results:
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        lines.append(f"{r.name:44} {r.value:14,.1f}  {r.unit:10} {ratio:>7}  {r.baseline or ''}")
    return "\n".join(lines)


async def until(condition: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    """Poll ``condition`` every 10 ms; raise after ``within_s`` seconds (no benchmark waits forever)."""
    deadline = time.monotonic() + within_s
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark gave up after {within_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def redis_to_measure_on(prog: str) -> RedisServer | None:
    """Quiet logs and a Redis for a benchmark command (``REDIS_URL``, a container or a
    process); None, with the reason printed, when there is none."""
    configure_logging("bench", "console", "WARNING")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    try:
        return acquire()
    except NoRedis as exc:
        print(f"{prog}: no Redis to measure on: {exc}", file=sys.stderr)
        return None
