"""Run the benchmarks and write bench/results/latest.json.

    python -m bench.run [--quick] [--only NAME]

Measures on ``REDIS_URL`` if set, otherwise on a Redis started for the purpose (a
container of the locally built image, or a redis-server process), so every ratio
compares two numbers measured on the same Redis in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import time
from datetime import UTC, datetime
from typing import Any

from bench import (
    agent_bench,
    common,
    gateway_bench,
    history,
    pipeline_bench,
    placement_bench,
    queue_bench,
    runtime_bench,
    scheduling_bench,
    sharing_bench,
)

BENCHES: dict[str, Any] = {
    "agent": agent_bench.run,
    "runtime": runtime_bench.run,
    "placement": placement_bench.run,
    "queue": queue_bench.run,
    "sharing": sharing_bench.run,
    "scheduling": scheduling_bench.run,
    "pipeline": pipeline_bench.run,
    "gateway": gateway_bench.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--quick", action="store_true", help="fewer events and repeats (a smoke run)")
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    parser.add_argument(
        "--no-history", action="store_true", help="do not append this run to bench/history.jsonl (a trial run)"
    )
    args = parser.parse_args(argv)
    server = common.redis_to_measure_on("bench")
    if server is None:
        return 1
    print(f"bench: Redis from {server.kind} ({server.detail}); {os.cpu_count()} cores")
    results: list[common.Result] = []
    try:
        for name in args.only or sorted(BENCHES):
            print(f"- {name}", flush=True)
            t0 = time.monotonic()
            kwargs: dict[str, object] = {"n": 10_000, "repeats": 3, "seconds": 0.5} if args.quick else {}
            out: Any = BENCHES[name](server.url, **kwargs)
            results.extend(asyncio.run(out) if inspect.isawaitable(out) else out)
            print(f"  ({time.monotonic() - t0:.0f}s)")
    finally:
        server.stop()
    path = common.write(results)
    print(common.table(results))
    print(f"written to {path}")
    if not args.no_history:
        row = history.entry(
            results,
            quick=args.quick,
            commit=history.commit_id(),
            at=datetime.now(UTC),
            redis=f"{server.kind} ({server.detail})",
        )
        print(f"appended to {history.append(row)}; make bench-compare shows the change")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
