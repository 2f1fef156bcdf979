"""Services as operating-system processes (``python -m minicloud_<service>``), as
``make run`` starts them: for tests and benchmarks that need the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from typing import IO, Any


def start_service(service: str, env: dict[str, str], output: IO[Any] | int | None = None) -> subprocess.Popen[bytes]:
    """Start one service with ``env`` over this process's environment; its stdout (and
    stderr, when ``output`` is a file) goes to ``output`` (None: inherited)."""
    stderr = subprocess.STDOUT if output not in (None, subprocess.DEVNULL) else None
    return subprocess.Popen(  # noqa: S603 (our own module, by name)
        [sys.executable, "-m", f"minicloud_{service}"], env={**os.environ, **env}, stdout=output, stderr=stderr
    )


def stop_services(procs: Iterable[subprocess.Popen[bytes]], timeout_s: float = 10) -> None:
    """SIGTERM each, then wait; one still running after ``timeout_s`` is killed."""
    procs = list(procs)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout_s)
