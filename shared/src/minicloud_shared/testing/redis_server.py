"""Where the tests get a real Redis from.

In order: ``REDIS_URL`` if set; a testcontainers ``RedisContainer`` (image from
``MINICLOUD_REDIS_IMAGE``, default the locally built ``minicloud/redis:7.0-bookworm``;
the reaper is disabled because its image cannot be pulled everywhere); a
``redis-server`` process on a free port; otherwise none. ``MINICLOUD_TEST_REDIS``
(``auto``, ``container``, ``process``) forces one path; CI sets ``container``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_IMAGE = "minicloud/redis:7.0-bookworm"


class NoRedis(Exception):
    """No way to get a real Redis here; the message says what was tried."""


@dataclass
class RedisServer:
    url: str
    kind: str  # "env" | "container" | "process"
    detail: str = ""
    _stop: Any = field(default=None, repr=False)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server a test or benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _container(image: str) -> RedisServer:
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    try:
        from testcontainers.community.redis import RedisContainer
    except ImportError as exc:  # pragma: no cover - the testing extra is installed
        raise NoRedis(f"testcontainers is not installed: {exc}") from exc
    try:
        container = RedisContainer(image)
        container.start()
    except Exception as exc:
        raise NoRedis(
            f"could not start container {image!r}: {type(exc).__name__}: {str(exc)[:300]} "
            "(build it with 'make images', or set MINICLOUD_REDIS_IMAGE to an image you have)"
        ) from exc
    host = container.get_container_host_ip()
    port = container.get_exposed_port(6379)
    return RedisServer(f"redis://{host}:{port}/0", "container", image, container.stop)


def start_process(
    port: int | None = None, appendonly: bool = False, workdir: str | None = None, extra: Sequence[str] = ()
) -> RedisServer:
    """A redis-server child process on a free loopback port, data in a temp dir (or in
    ``workdir``, which is kept when it stops: a server started again there on the same
    port is a restart with the data); ``extra``: more server options (``--aclfile``, ...)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise NoRedis("redis-server is not on PATH")
    port = port or free_port()
    keep = workdir is not None
    workdir = workdir or tempfile.mkdtemp(prefix="minicloud-redis-")
    proc = subprocess.Popen(  # noqa: S603 - our own argv, the executable found by shutil.which
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            workdir,
            "--appendonly",
            "yes" if appendonly else "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up (an ACL file may turn off the default user)
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise NoRedis(f"redis-server did not answer on port {port} within 10 s")

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    return RedisServer(f"redis://127.0.0.1:{port}/0", "process", exe, stop)


def acquire() -> RedisServer:
    """A real Redis by the rules in the module docstring, or :class:`NoRedis`."""
    url = os.environ.get("REDIS_URL")
    if url:
        return RedisServer(url, "env", "REDIS_URL")
    mode = os.environ.get("MINICLOUD_TEST_REDIS", "auto")
    image = os.environ.get("MINICLOUD_REDIS_IMAGE", DEFAULT_IMAGE)
    tried: list[str] = []
    if mode in ("auto", "container"):
        try:
            return _container(image)
        except NoRedis as exc:
            if mode == "container":
                raise
            tried.append(f"container: {exc}")
    if mode in ("auto", "process"):
        try:
            return start_process()
        except NoRedis as exc:
            tried.append(f"redis-server: {exc}")
    raise NoRedis("; ".join(tried) or f"MINICLOUD_TEST_REDIS={mode!r} is not one of auto, container, process")
