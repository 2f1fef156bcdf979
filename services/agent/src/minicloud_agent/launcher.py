"""The process runtime's launcher: ``python -m minicloud_agent.launcher DIR``.

Started by the agent in a session of its own (so an agent killed with SIGKILL leaves
it running), it runs the task described in ``DIR/task.json`` with ``DIR/work`` as its
private working directory, writes every output line with its time to
``DIR/output.jsonl`` (one JSON object per line: ``t``, ``s``: stdout or stderr,
``l``: the line), forwards SIGTERM and SIGINT to the program, and when the program
ends writes ``DIR/exit.json`` (``code``: the exit code, 128 + n for signal n; ``at``)
— atomically, so an agent that restarts finds either a finished exit or none. Its
own pid is in ``DIR/launcher.pid`` before the program starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

MAX_LINE = 2048  # longer lines are cut (a log is for people, not a data channel)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _atomic(path: Path, doc: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _pump(src: IO[bytes], name: str, out: IO[str], lock: threading.Lock) -> None:
    for raw in iter(src.readline, b""):
        line = raw.rstrip(b"\n").decode("utf-8", "replace")[:MAX_LINE]
        with lock:
            out.write(json.dumps({"t": _now(), "s": name, "l": line}) + "\n")
            out.flush()


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    task = json.loads((root / "task.json").read_text())
    _atomic(root / "launcher.pid", os.getpid())
    work = root / "work"
    work.mkdir(exist_ok=True)
    lock = threading.Lock()
    with (root / "output.jsonl").open("a", encoding="utf-8") as out:
        try:
            proc = subprocess.Popen(  # noqa: S603 -- running the tenant's command is the point
                task["argv"],
                cwd=work,
                env=task["env"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            with lock:
                out.write(json.dumps({"t": _now(), "s": "agent", "l": f"cannot start {task['argv'][0]!r}: {exc}"}))
                out.write("\n")
            _atomic(root / "exit.json", {"code": 127, "at": _now(), "detail": f"cannot start: {exc.strerror}"})
            return 0

        def forward(signum: int, _frame: object) -> None:
            if proc.poll() is None:
                proc.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        pumps = [
            threading.Thread(target=_pump, args=(s, n, out, lock), daemon=True)
            for s, n in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        for t in pumps:
            t.start()
        code = proc.wait()
        ended = _now()
        for t in pumps:
            t.join(timeout=5)
    _atomic(root / "exit.json", {"code": 128 - code if code < 0 else code, "at": ended})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
