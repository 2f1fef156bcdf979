"""Where a path's time goes: a benchmark scenario run under the ``py-spy`` sampling
profiler, summarised as tables (what docs/performance.md quotes).

    python -m bench.profile pipeline|billing|runtime|scheduling [--events N] [--out DIR]

- ``pipeline``: metering and billing (a process each) draining allocation lifecycle
  events, as ``pipeline.usage_events_per_s`` does; both processes are sampled.
- ``billing``: billing alone rating usage records written straight to its stream.
- ``runtime``: the exactly-once runtime with a one-increment handler, in this process.
- ``scheduling``: one scheduling runtime placing single-GPU submissions, in this process.

For each sampled process it writes the folded stacks (``<out>/<name>.folded``, the
input of any flame graph tool) and prints: busy samples (py-spy leaves idle waits
out), the share of samples inside each runtime stage, and the functions with the
most samples of their own. ``make profile`` runs all four.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import redis_to_measure_on

OUT = Path(__file__).parent / "results" / "profiles"

# Stages of the exactly-once path, by a frame that marks them (file:function as py-spy
# prints it, matched as a substring). A sample counts in every stage on its stack.
STAGES: dict[str, tuple[str, ...]] = {
    "read (XREADGROUP, FastStream)": ("faststream/redis/subscriber",),
    "decode and validate": ("decode_entry (",),
    "handlers": ("_handle (",),
    "  of which pydantic validation": ("model_validate (", "validate_python ("),
    "  of which model_copy": ("model_copy (",),
    "  of which Decimal rating": ("pricing.py",),
    "build the commit plan": ("Transaction.staged (", "CommitPlan.to_json ("),
    "  of which JSON of records": ("model_dump_json (",),
    "send the commit (redis-py)": ("Committer.send (", "AsyncScript.__call__ ("),
    "settle": ("Committer.settle (",),
    "logging (structlog)": ("structlog/",),
}
# Own samples of the event loop and its transports (every stack has the loop at its
# root, so this one is counted by the innermost frame).
LOOP_LEAVES = ("asyncio/", "selectors.py")


@dataclass
class Profile:
    name: str
    path: Path
    samples: int
    seconds: float
    stages: dict[str, int]
    own: list[tuple[str, int]]

    def table(self) -> str:
        busy = self.samples / max(self.seconds, 1e-9) / RATE
        lines = [
            f"## {self.name}: {self.samples} busy samples in {self.seconds:.1f}s at {RATE}/s "
            f"(busy {busy:.0%} of one core)",
            "",
            "| stage | share of busy samples |",
            "|---|---|",
        ]
        for stage, n in self.stages.items():
            lines.append(f"| {stage} | {n / max(self.samples, 1):.1%} |")
        lines += ["", "| function (own samples) | share |", "|---|---|"]
        for frame, n in self.own:
            lines.append(f"| `{frame}` | {n / max(self.samples, 1):.1%} |")
        return "\n".join(lines)


RATE = 250


def summarise(name: str, path: Path, seconds: float, top: int = 15) -> Profile:
    stages: Counter[str] = Counter(dict.fromkeys([*STAGES, "event loop itself (own samples)"], 0))
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        for stage, marks in STAGES.items():
            if any(m in stack for m in marks):
                stages[stage] += count
        leaf = stack.rsplit(";", 1)[-1]
        own[_short(leaf)] += count
        if any(m in leaf for m in LOOP_LEAVES):
            stages["event loop itself (own samples)"] += count
    return Profile(name, path, total, seconds, dict(stages), own.most_common(top))


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    func, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{func} ({where})"


def py_spy() -> str | None:
    """The py-spy executable: on PATH, or beside this interpreter (the project's venv)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


class Sampler:
    """py-spy recording one process until stopped (SIGINT makes it write its output)."""

    def __init__(self, pid: int, path: Path) -> None:
        exe = py_spy()
        assert exe is not None, "py-spy is not installed"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "--output",
                str(path),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> float:
        seconds = time.monotonic() - self.t0
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        if not self.path.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
        return seconds


async def _pipeline(url: str, events: int, out: Path) -> list[Profile]:
    from bench import pipeline_bench

    return await pipeline_bench.profiled(url, events, lambda pid, name: Sampler(pid, out / f"{name}.folded"))


async def _billing(url: str, events: int, out: Path) -> list[Profile]:
    from bench import pipeline_bench

    return await pipeline_bench.profiled_billing(url, events, lambda pid, name: Sampler(pid, out / f"{name}.folded"))


async def _in_process(name: str, out: Path, work: Callable[[], Awaitable[Any]]) -> list[Profile]:
    sampler = Sampler(os.getpid(), out / f"{name}.folded")
    await asyncio.sleep(0.5)  # py-spy attaches
    try:
        await work()
    finally:
        seconds = sampler.stop()
    return [summarise(name, sampler.path, seconds)]


async def _runtime(url: str, events: int, out: Path) -> list[Profile]:
    from bench import runtime_bench

    return await _in_process("runtime", out, lambda: runtime_bench.runtime_drain(url, events, batch_size=500))


async def _scheduling(url: str, events: int, out: Path) -> list[Profile]:
    from bench import scheduling_bench

    return await _in_process("scheduling", out, lambda: scheduling_bench.throughput_only(url, events))


SCENARIOS: dict[str, tuple[Callable[[str, int, Path], Awaitable[list[Profile]]], int]] = {
    "pipeline": (_pipeline, 60_000),
    "billing": (_billing, 100_000),
    "runtime": (_runtime, 100_000),
    "scheduling": (_scheduling, 2_000),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.profile")
    parser.add_argument("scenario", nargs="*", help=f"any of {', '.join(sorted(SCENARIOS))} (default: all)")
    parser.add_argument("--events", type=int, help="events (or submissions) per scenario")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenario if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(sorted(SCENARIOS))}")
    if py_spy() is None:
        print("bench.profile: py-spy is not installed (make install installs it)", file=sys.stderr)
        return 1
    server = redis_to_measure_on("bench.profile")
    if server is None:
        return 1
    try:
        for name in args.scenario or sorted(SCENARIOS):
            run, default = SCENARIOS[name]
            print(f"- {name}", flush=True)
            profiles: list[Profile] = asyncio.run(run(server.url, args.events or default, args.out))
            for profile in profiles:
                print(profile.table() + f"\n\nfolded stacks: {profile.path}\n", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
