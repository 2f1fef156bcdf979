"""``python -m minicloud_demo``: play a simulated month against a running cloud, through
its public API, and write the report.

    python -m minicloud_demo --endpoint http://localhost:8080 --operator-key mck_... \\
        --clock accelerated:9000@2026-12-01T00:00:00Z~1795000000 --out results/demo

The clock must be the one the services run (``MINICLOUD_CLOCK``; ``make demo`` sets
both). Without ``--clock`` the environment's ``MINICLOUD_CLOCK`` is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from minicloud_demo import report, scenario, sim
from minicloud_shared.clock import AcceleratedClock, clock_from_spec


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="minicloud-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default=os.environ.get("MINICLOUD_ENDPOINT", "http://localhost:8080"))
    p.add_argument("--operator-key", default=os.environ.get("MINICLOUD_OPERATOR_KEY"))
    p.add_argument("--clock", default=os.environ.get("MINICLOUD_CLOCK"), help="the services' clock spec")
    p.add_argument("--days", type=int, default=int(os.environ.get("MINICLOUD_DEMO_DAYS", "31")))
    p.add_argument("--scale", type=float, default=float(os.environ.get("MINICLOUD_DEMO_SCALE", "1")))
    p.add_argument("--load", type=float, default=float(os.environ.get("MINICLOUD_DEMO_LOAD", "1")))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=os.environ.get("MINICLOUD_DEMO_OUT", "results/demo"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    err = Console(stderr=True)
    if not a.operator_key:
        err.print("minicloud-demo: the operator's key is needed: --operator-key or MINICLOUD_OPERATOR_KEY")
        return 2
    try:
        clock = clock_from_spec(a.clock or "")
    except ValueError as exc:
        err.print(f"minicloud-demo: {exc}")
        return 2
    if not isinstance(clock, AcceleratedClock) or "@" not in (a.clock or ""):
        err.print(
            "minicloud-demo: the cloud must run an accelerated clock with a start: "
            "accelerated:<factor>@<start>~<anchor>"
        )
        return 2
    start = datetime.fromisoformat(a.clock.split("@", 1)[1].split("~", 1)[0]).astimezone(UTC)
    plan = scenario.build(start, days=a.days, seed=a.seed, scale=a.scale, load=a.load)
    out = Path(a.out)
    console = Console()
    console.print(
        f"minicloud demo: {len(plan.hosts)} hosts, {len(plan.tenants)} tenants, {len(plan.jobs)} workloads, "
        f"{len(plan.events)} fleet events over {a.days} days at x{clock.factor:.0f} "
        f"(~{a.days * 86400 / clock.factor / 60:.1f} real minutes) against {a.endpoint}"
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("simulated month", total=1.0, status="setting up")

        shown = {"step": -1}

        def progress(fraction: float, status: str) -> None:
            bar.update(task, completed=fraction, status=status)
            # Without a terminal (a log, CI) the bar is not redrawn: a line per tenth instead.
            if not console.is_terminal and int(fraction * 10) > shown["step"]:
                shown["step"] = int(fraction * 10)
                print(f"simulated month: {fraction:4.0%}  {status}", flush=True)

        try:
            record = asyncio.run(sim.run(plan, a.endpoint, a.operator_key, clock, clock.factor, progress))
        except sim.DemoError as exc:
            err.print(f"minicloud-demo: {exc}")
            return 1
    summary = report.write(record, out)
    console.print(report.render_text(summary))
    console.print(f"report: {out / 'report.html'} (plots: {', '.join(p.name for p in sorted(out.glob('*.png')))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
