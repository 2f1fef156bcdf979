"""Where a task's process runs: the runtime interface and its two implementations.

- :class:`ProcessRuntime` — a subprocess in a private directory (tests, ``make run``,
  machines without Docker), through ``launcher``: it survives the agent, keeps its
  output in a file and writes its exit code when it ends, so an agent that restarts
  adopts it, ships the output it missed and reports an exit that happened meanwhile.
- :class:`DockerRuntime` — a container per task through the Docker Engine API: GPUs
  by UUID (on a real GPU host), CPU and memory limits, a non-root user, every
  capability dropped, no new privileges, a network of its own, labels naming the
  allocation, workload, host and rank (what a restarted agent adopts by).

Both are keyed by (allocation, rank): starting a task that exists adopts it, so a
StartTask delivered twice never runs a workload twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

MAX_LINE = 2048  # characters kept of one output line (the launcher cuts at the same length)


@dataclass(frozen=True, slots=True)
class Task:
    """One node of an allocation, as the agent runs it."""

    allocation_id: str
    workload_id: str
    tenant_id: str
    rank: int
    image: str
    argv: list[str]
    env: dict[str, str]
    gpu_uuids: list[str] = field(default_factory=list)
    port: int | None = None  # the port the program listens on (inference)
    host_port: int | None = None  # where the host exposes it
    cpu_milli: int | None = None  # its CPU limit (the container's), thousandths of a vCPU
    memory_mib: int | None = None  # its memory limit (the container's), MiB

    @property
    def key(self) -> str:
        return f"{self.allocation_id}-r{self.rank}"


@dataclass(frozen=True, slots=True)
class Exit:
    code: int
    at: datetime
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Line:
    at: datetime
    stream: str  # stdout, stderr or agent
    text: str


@dataclass(frozen=True, slots=True)
class Observed:
    """A task as its runtime sees it now."""

    key: str
    running: bool
    exit: Exit | None = None


class Runtime(Protocol):
    name: str

    async def start(self, task: Task) -> None:
        """Start the task, or adopt it if it exists; raises StartFailed if it cannot run."""

    async def observe(self, key: str) -> Observed | None:
        """The task's state, or None if this runtime has no such task."""

    async def keys(self) -> list[str]:
        """Every task this runtime has on this host (running or exited, not yet removed)."""

    async def signal(self, key: str, sig: int) -> None:
        """Send ``sig`` to the task's program (SIGKILL ends it for sure)."""

    async def output(self, key: str, cursor: str, limit: int) -> tuple[list[Line], str]:
        """At most ``limit`` output lines after ``cursor`` ("" from the start), and the
        cursor after them."""

    async def remove(self, key: str) -> None:
        """Forget a finished task (its files or its container)."""


class StartFailed(Exception):
    """The task cannot run (image not found, program missing): a clear reason."""


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False  # a zombie: it has ended
    return True


class ProcessRuntime:
    """Tasks as processes in private directories under ``root``."""

    name = "process"

    def __init__(self, root: Path, base_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_env = (
            base_env
            if base_env is not None
            else {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH")}
        )
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _dir(self, key: str) -> Path:
        return self.root / key

    async def start(self, task: Task) -> None:
        d = self._dir(task.key)
        if (d / "launcher.pid").exists() or (d / "exit.json").exists():
            return  # started before (a StartTask delivered again, or an agent restart): adopt
        if shutil.which(task.argv[0], path=self.base_env.get("PATH")) is None and "/" not in task.argv[0]:
            raise StartFailed(f"program {task.argv[0]!r} not found on this host (process runtime)")
        d.mkdir(parents=True, exist_ok=True)
        env = {**self.base_env, **task.env, "HOME": str(d / "work")}
        (d / "task.json").write_text(json.dumps({"argv": task.argv, "env": env, "tenant": task.tenant_id}))
        # Detached on purpose (not asyncio's subprocess, tied to this loop): the
        # launcher must outlive the agent. Popen returns at once.
        proc = subprocess.Popen(  # noqa: S603, ASYNC220 -- our own launcher, argv only
            [sys.executable, "-m", "minicloud_agent.launcher", str(d)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(d / "launcher.err").open("ab"),
            start_new_session=True,  # outlives the agent; its group is the task's
        )
        self._children[task.key] = proc
        for _ in range(200):  # the launcher writes its pid first thing
            if (d / "launcher.pid").exists() or proc.poll() is not None:
                break
            await asyncio.sleep(0.01)

    def _pid(self, key: str) -> int | None:
        try:
            return int((self._dir(key) / "launcher.pid").read_text())
        except (OSError, ValueError):
            return None

    async def observe(self, key: str) -> Observed | None:
        d = self._dir(key)
        if not d.exists():
            return None
        child = self._children.get(key)
        if child is not None:
            child.poll()  # reap it if it ended (else it lingers as a zombie)
        with contextlib.suppress(OSError, ValueError, KeyError):
            doc = json.loads((d / "exit.json").read_text())
            return Observed(key, False, Exit(int(doc["code"]), _parse_time(doc["at"]), doc.get("detail", "")))
        pid = self._pid(key)
        if pid is None:
            started = child is not None and child.poll() is None
            return Observed(key, started)  # still starting, or never started (StartTask redelivery starts it)
        if _pid_alive(pid):
            return Observed(key, True)
        # The launcher is gone without an exit file: killed (SIGKILL) or died with the host.
        with contextlib.suppress(OSError):
            killed = (d / "killed").read_text()
            return Observed(key, False, Exit(137, _parse_time(killed), "killed after the grace period"))
        return Observed(key, False, Exit(137, datetime.now(UTC), "the process ended without an exit status"))

    async def keys(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "task.json").exists())

    async def signal(self, key: str, sig: int) -> None:
        pid = self._pid(key)
        if pid is None or not _pid_alive(pid):
            return
        if sig == signal.SIGKILL:
            (self._dir(key) / "killed").write_text(datetime.now(UTC).isoformat())
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the launcher and its program
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)  # the launcher forwards it to the program

    async def output(self, key: str, cursor: str, limit: int) -> tuple[list[Line], str]:
        path = self._dir(key) / "output.jsonl"
        offset = int(cursor or 0)
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read(1 << 20)
        except OSError:
            return [], cursor
        lines: list[Line] = []
        pos = 0
        while len(lines) < limit:
            nl = chunk.find(b"\n", pos)
            if nl < 0:
                break  # whole lines only
            raw, pos = chunk[pos:nl], nl + 1
            with contextlib.suppress(ValueError, KeyError):
                doc = json.loads(raw)
                lines.append(Line(_parse_time(doc["t"]), doc["s"], str(doc["l"])[:MAX_LINE]))
        return lines, str(offset + pos)

    async def remove(self, key: str) -> None:
        self._children.pop(key, None)
        shutil.rmtree(self._dir(key), ignore_errors=True)


LABEL = "io.minicloud"


class DockerRuntime:
    """Tasks as containers (the Docker Engine API, through the ``docker`` package).

    ``gpus``: request the task's GPUs by UUID from the NVIDIA container runtime (a real
    GPU host); without it the container gets no device. ``network``: the workloads'
    own bridge network (created if missing), which has no route to the control plane's
    network; ``cpus`` and ``memory_mib`` cap each container."""

    name = "docker"

    def __init__(
        self,
        host_id: str,
        *,
        gpus: bool = False,
        network: str = "minicloud-workloads",
        cpus: float | None = None,
        memory_mib: int | None = None,
        user: str = "65534:65534",
        client: Any = None,
    ) -> None:
        import docker

        self.host_id = host_id
        self.client = client or docker.from_env()
        self.gpus, self.network, self.cpus, self.memory_mib, self.user = gpus, network, cpus, memory_mib, user
        self._errors = docker.errors
        self._net_id: str | None = None

    def _name(self, key: str) -> str:
        return f"mc-{self.host_id}-{key}"

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _network_id(self) -> str:
        """The workloads' network, made if missing. Docker allows two networks of one
        name, and agents starting together may each make one: every agent picks the
        same one (the smallest id) and removes the others it can."""
        if self._net_id is not None:
            return self._net_id

        def named() -> list[Any]:
            found = self.client.networks.list(names=[self.network])
            return sorted((n for n in found if n.name == self.network), key=lambda n: n.id)

        nets = named()
        if not nets:
            with contextlib.suppress(self._errors.APIError):
                self.client.networks.create(self.network, driver="bridge", labels={LABEL: "workloads"})
            nets = named()
        for extra in nets[1:]:
            with contextlib.suppress(self._errors.APIError):
                extra.remove()
        self._net_id = str(nets[0].id)
        return self._net_id

    def _start(self, task: Task) -> None:
        errors = self._errors
        try:
            existing = self.client.containers.get(self._name(task.key))
            if existing.status == "created":
                existing.start()
            return  # adopted
        except errors.NotFound:
            pass
        network = self._network_id()
        kwargs: dict[str, Any] = {
            "name": self._name(task.key),
            "command": task.argv,
            "environment": task.env,
            "labels": {
                f"{LABEL}.host": self.host_id,
                f"{LABEL}.allocation": task.allocation_id,
                f"{LABEL}.workload": task.workload_id,
                f"{LABEL}.tenant": task.tenant_id,
                f"{LABEL}.rank": str(task.rank),
                f"{LABEL}.key": task.key,
            },
            "user": self.user,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "network": network,
            "detach": True,
            "pids_limit": 4096,
        }
        # The task's own CPU and memory (what scheduling placed), else the runtime's default.
        if task.cpu_milli:
            kwargs["nano_cpus"] = task.cpu_milli * 1_000_000
        elif self.cpus:
            kwargs["nano_cpus"] = int(self.cpus * 1e9)
        if task.memory_mib:
            kwargs["mem_limit"] = f"{max(task.memory_mib, 6)}m"  # Docker's least is 6 MiB
        elif self.memory_mib:
            kwargs["mem_limit"] = f"{self.memory_mib}m"
        if task.port is not None and task.host_port is not None:
            kwargs["ports"] = {f"{task.port}/tcp": task.host_port}
        if self.gpus and task.gpu_uuids:
            import docker.types

            kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=task.gpu_uuids, capabilities=[["gpu"]])]
        try:
            self.client.images.get(task.image)
        except errors.ImageNotFound:
            try:
                self.client.images.pull(task.image)
            except errors.APIError as exc:
                raise StartFailed(f"image {task.image} not found on this host, and it could not be pulled") from exc
        try:
            try:
                self.client.containers.run(task.image, **kwargs)
            except errors.NotFound as exc:
                if "network" not in str(exc).lower():
                    raise
                self._net_id = None  # removed since (make down): made again, once
                self.client.containers.run(task.image, **{**kwargs, "network": self._network_id()})
        except errors.ImageNotFound as exc:
            raise StartFailed(f"image {task.image} not found: {exc.explanation or exc}") from exc
        except errors.APIError as exc:
            if exc.status_code == 409:
                return  # created meanwhile (a concurrent delivery): adopt
            raise StartFailed(f"the container could not start: {exc.explanation or exc}") from exc

    async def start(self, task: Task) -> None:
        await self._call(self._start, task)

    def _get(self, key: str) -> Any:
        try:
            return self.client.containers.get(self._name(key))
        except self._errors.NotFound:
            return None

    async def observe(self, key: str) -> Observed | None:
        c = await self._call(self._get, key)
        if c is None:
            return None
        state = c.attrs.get("State", {})
        if state.get("Status") in ("created", "running", "restarting", "paused"):
            return Observed(key, state.get("Status") != "created")
        at = _parse_time(state.get("FinishedAt", "")[:26].rstrip("Z") + "+00:00") if state.get("FinishedAt") else None
        detail = "killed (out of memory)" if state.get("OOMKilled") else state.get("Error", "")
        return Observed(key, False, Exit(int(state.get("ExitCode", -1)), at or datetime.now(UTC), detail))

    async def keys(self) -> list[str]:
        found = await self._call(
            self.client.containers.list, all=True, filters={"label": f"{LABEL}.host={self.host_id}"}
        )
        return sorted(c.labels.get(f"{LABEL}.key", "") for c in found if c.labels.get(f"{LABEL}.key"))

    async def signal(self, key: str, sig: int) -> None:
        c = await self._call(self._get, key)
        if c is not None and c.status == "running":
            with contextlib.suppress(self._errors.APIError):
                await self._call(c.kill, signal=int(sig))

    async def output(self, key: str, cursor: str, limit: int) -> tuple[list[Line], str]:
        c = await self._call(self._get, key)
        if c is None:
            return [], cursor
        since = float(cursor) if cursor else None
        out: list[Line] = []
        last = cursor
        for stream, flag in (
            ("stdout", {"stdout": True, "stderr": False}),
            ("stderr", {"stdout": False, "stderr": True}),
        ):
            raw = await self._call(c.logs, timestamps=True, since=since, **flag)
            for row in raw.decode("utf-8", "replace").splitlines():
                stamp, _, text = row.partition(" ")
                with contextlib.suppress(ValueError):
                    at = _parse_time(stamp[:26].rstrip("Z") + "+00:00")
                    if since is not None and at.timestamp() <= since:
                        continue
                    out.append(Line(at, stream, text[:MAX_LINE]))
        out.sort(key=lambda ln: ln.at)
        out = out[:limit]
        if out:
            last = repr(out[-1].at.timestamp())
        return out, last

    async def remove(self, key: str) -> None:
        c = await self._call(self._get, key)
        if c is not None:
            with contextlib.suppress(self._errors.APIError):
                await self._call(c.remove, force=True)
