"""The benchmark history: every ``make bench`` appends one line to bench/history.jsonl
(commit, date, machine, every figure), and ``make bench-compare`` prints the change of
the newest run against the one before it, so a regression shows up in review.

    python -m bench.history compare [--file PATH] [--threshold PCT]

A run is compared with the previous run of the same kind (full with full, quick with
quick). Whether a change is better or worse follows the unit: rates (``/s``) and
ratios are better higher, times (``ms``, ``s``) better lower. Changes within the
threshold (default 10%, this machine's run-to-run noise) are reported as noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Result

HISTORY = Path(__file__).parent / "history.jsonl"


def commit_id(cwd: Path | None = None) -> str:
    """The checkout's commit, with ``-dirty`` when tracked files differ from it."""
    where = cwd or Path(__file__).parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def entry(results: Sequence[Result], *, quick: bool, commit: str, at: datetime, redis: str) -> dict[str, Any]:
    return {
        "commit": commit,
        "date": at.astimezone(UTC).isoformat(timespec="seconds"),
        "kind": "quick" if quick else "full",
        "cores": os.cpu_count(),
        "redis": redis,
        "results": {
            r.name: {"value": r.value, "unit": r.unit} | ({"ratio": r.ratio} if r.ratio is not None else {})
            for r in results
        },
    }


def append(row: dict[str, Any], path: Path = HISTORY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    return path


def load(path: Path = HISTORY) -> list[dict[str, Any]]:
    """The history's runs, oldest first; a line that is not a run is an error naming it."""
    if not path.exists():
        return []
    rows = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{no}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("results"), dict):
            raise ValueError(f"{path}:{no}: not a benchmark run (no results)")
        rows.append(row)
    return rows


def higher_is_better(unit: str) -> bool:
    return unit.endswith("/s") or unit in ("ratio", "x")


def verdict(before: float, after: float, unit: str, threshold: float) -> tuple[float | None, str]:
    """The relative change and whether it is better, worse or noise."""
    if before == 0:
        return None, "new" if after else "same"
    change = (after - before) / abs(before)
    if abs(change) <= threshold:
        return change, "noise"
    better = change > 0 if higher_is_better(unit) else change < 0
    return change, "better" if better else "WORSE"


def compare(rows: list[dict[str, Any]], threshold: float = 0.10) -> tuple[str, int]:
    """A table of the newest run against the previous run of its kind, and how many
    figures got worse beyond the threshold."""
    if not rows:
        return "no benchmark run in the history yet: run make bench", 0
    new = rows[-1]
    earlier = [r for r in rows[:-1] if r.get("kind") == new.get("kind")]
    head = f"newest: {new['commit'][:12]} {new['date']} ({new.get('kind')})"
    if not earlier:
        return f"{head}\nno earlier {new.get('kind')} run to compare with", 0
    lines = [
        head,
        f"before: {earlier[-1]['commit'][:12]} {earlier[-1]['date']} (a figure it lacks: the last run that has it)",
        f"{'benchmark':44} {'before':>12} {'now':>12}  {'unit':9} {'change':>8}  verdict   ratio before -> now",
    ]
    worse = 0
    for name, now in new["results"].items():
        source = next((r for r in reversed(earlier) if name in r["results"]), None)
        if source is None:
            lines.append(f"{name:44} {'-':>12} {now['value']:12,.1f}  {now['unit']:9} {'':>8}  new")
            continue
        was = source["results"][name]
        change, word = verdict(float(was["value"]), float(now["value"]), now["unit"], threshold)
        worse += word == "WORSE"
        pct = f"{change:+.1%}" if change is not None else ""
        ratios = f"{was.get('ratio', '-')} -> {now.get('ratio', '-')}" if "ratio" in now or "ratio" in was else ""
        if source is not earlier[-1]:
            ratios += f" (before: {source['commit'][:12]})"
        lines.append(
            f"{name:44} {was['value']:12,.1f} {now['value']:12,.1f}  {now['unit']:9} {pct:>8}  {word:9} {ratios}"
        )
    lines.append(f"{worse} figure(s) worse by more than {threshold:.0%}")
    return "\n".join(lines), worse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.history")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="the newest run against the previous run of its kind")
    cmp.add_argument("--file", type=Path, default=HISTORY)
    cmp.add_argument("--threshold", type=float, default=10.0, help="percent treated as noise (default 10)")
    cmp.add_argument("--strict", action="store_true", help="exit 1 when a figure got worse beyond the threshold")
    args = parser.parse_args(argv)
    try:
        rows = load(args.file)
    except ValueError as exc:
        print(f"bench.history: {exc}", file=sys.stderr)
        return 2
    text, worse = compare(rows, args.threshold / 100)
    print(text)
    return 1 if args.strict and worse else 0


if __name__ == "__main__":
    raise SystemExit(main())
