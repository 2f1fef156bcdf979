"""The benchmark history: what a run appends, and how make bench-compare reads it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import history
from bench.common import Result

AT = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def run(path: Path, commit: str, quick: bool = False, **values: float) -> None:
    units = {"rate": "events/s", "p99": "ms", "close": "s"}
    results = [Result(name, value, units[name]) for name, value in values.items()]
    if "rate" in values:
        results[0].ratio = round(values["rate"] / 50_000, 3)
    history.append(history.entry(results, quick=quick, commit=commit, at=AT, redis="process (test)"), path)


def test_each_run_is_one_line_with_commit_date_and_every_figure(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    run(path, "a" * 40, rate=20_000.0, p99=30.0)
    run(path, "b" * 40, quick=True, rate=10_000.0)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert (first["commit"], first["date"], first["kind"]) == ("a" * 40, "2026-11-30T07:00:00+00:00", "full")
    assert first["results"] == {
        "rate": {"value": 20_000.0, "unit": "events/s", "ratio": 0.4},
        "p99": {"value": 30.0, "unit": "ms"},
    }
    assert json.loads(lines[1])["kind"] == "quick"


def test_compare_names_what_got_worse_by_the_unit_and_ignores_noise(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    run(path, "a" * 40, rate=20_000.0, p99=30.0, close=0.6)
    run(path, "q" * 40, quick=True, rate=1.0, p99=1.0, close=1.0)  # another kind: not the baseline
    run(path, "b" * 40, rate=30_000.0, p99=40.0, close=0.62)
    text, worse = history.compare(history.load(path))
    rows = {line.split()[0]: line for line in text.splitlines()[3:-1]}
    assert "+50.0%" in rows["rate"]
    assert "better" in rows["rate"]
    assert "0.4 -> 0.6" in rows["rate"]
    assert "+33.3%" in rows["p99"]
    assert "WORSE" in rows["p99"]
    assert "noise" in rows["close"]
    assert worse == 1
    assert history.main(["compare", "--file", str(path), "--strict"]) == 1
    assert history.main(["compare", "--file", str(path), "--threshold", "50"]) == 0


def test_a_figure_missing_from_the_last_run_is_taken_from_the_last_run_that_has_it(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    run(path, "a" * 40, rate=20_000.0, p99=30.0)
    run(path, "b" * 40, rate=20_000.0)  # a --only run
    run(path, "c" * 40, p99=15.0)
    text, worse = history.compare(history.load(path))
    p99 = next(line for line in text.splitlines() if line.startswith("p99"))
    assert "better" in p99
    assert "aaaaaaaaaaaa" in p99
    assert worse == 0


def test_first_runs_and_broken_lines_are_explained_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "history.jsonl"
    assert history.compare([]) == ("no benchmark run in the history yet: run make bench", 0)
    run(path, "a" * 40, rate=1.0)
    assert "no earlier full run" in history.compare(history.load(path))[0]
    path.write_text(path.read_text() + "{oops\n")
    assert history.main(["compare", "--file", str(path)]) == 2
    assert "history.jsonl:2: not JSON" in capsys.readouterr().err


def test_the_commit_id_says_when_the_checkout_differs(tmp_path: Path) -> None:
    assert history.commit_id(tmp_path) == "unknown"  # not a repository
    assert len(history.commit_id().removesuffix("-dirty")) == 40
