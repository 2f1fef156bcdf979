"""The whole cloud as local processes on a real Redis: the five services started with
``python -m minicloud_<service>``, exactly as ``make run`` starts them, and helpers to
drive it through the public API."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx

from minicloud_gateway.identity import new_key
from minicloud_shared.contracts.topology import SERVICES
from minicloud_shared.testing.processes import start_service, stop_services
from minicloud_shared.testing.redis_server import free_port


@dataclass
class Cloud:
    endpoint: str
    operator_key: str
    redis_url: str
    log_dir: Path | None = None

    def logs(self) -> str:
        """Everything the services wrote to stdout and stderr so far."""
        if self.log_dir is None:
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    @property
    def op(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_key}"}


# The local stack's hosts, as make up and make run start their agents (host id ->
# GPUs, NVLink domain): two 8-GPU H100 hosts in one NVLink domain and a 1-GPU L40S.
LOCAL_HOSTS = {
    "local-h1": ("8 x h100-80gb-sxm", "eu-1a-r01-nvl0"),
    "local-h2": ("8 x h100-80gb-sxm", "eu-1a-r01-nvl0"),
    "local-l1": ("1 x l40s-48gb-pcie", "eu-1a-r02-nvl0"),
}


def agent_env(redis_url: str, host_id: str, gpus: str, domain: str, workdir: Path) -> dict[str, str]:
    """A host agent with the process runtime (no Docker, no GPU): heartbeats every 0.5 s."""
    return {
        "MINICLOUD_REDIS_URL": redis_url,
        "MINICLOUD_LOG_LEVEL": "INFO",
        "MINICLOUD_BLOCK_MS": "100",
        "MINICLOUD_HEALTH_PORT": "0",
        "MINICLOUD_AGENT_HOST_ID": host_id,
        "MINICLOUD_AGENT_GPUS": gpus,
        "MINICLOUD_AGENT_REGION": "eu-1",
        "MINICLOUD_AGENT_ZONE": "eu-1a",
        "MINICLOUD_AGENT_RACK": domain.rsplit("-", 1)[0],
        "MINICLOUD_AGENT_NVLINK_DOMAIN": domain,
        "MINICLOUD_AGENT_RUNTIME": "process",
        "MINICLOUD_AGENT_WORKDIR": str(workdir),
        "MINICLOUD_AGENT_HEARTBEAT_S": "0.5",
        "MINICLOUD_AGENT_POLL_S": "0.1",
    }


def kill_tasks(workdir: Path) -> None:
    """Programs the agents left running (they outlive their agents by design)."""
    for pid_file in workdir.glob("*/*/launcher.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


@contextmanager
def local_cloud(
    redis_url: str, log_dir: Path | None = None, agents: dict[str, tuple[str, str]] | None = None, **env: str
) -> Iterator[Cloud]:
    """Start the services (ticks every 0.2 s so snapshots and placements come quickly)
    and, with ``agents`` (host id -> GPUs, NVLink domain), a host agent per host with the
    process runtime; stop them on exit, each within 10 s. With ``log_dir``, each
    process's output goes to ``<name>.log`` there."""
    port, key = free_port(), new_key()[1]
    workdir = Path(tempfile.mkdtemp(prefix="minicloud-tasks-"))
    base = {
        "MINICLOUD_REDIS_URL": redis_url,
        "MINICLOUD_LOG_LEVEL": "WARNING",
        "MINICLOUD_TICK_S": "0.2",
        "MINICLOUD_BLOCK_MS": "100",
        "MINICLOUD_OPERATOR_KEY": key,
        "MINICLOUD_HEALTH_HOST": "127.0.0.1",
        **env,
    }
    procs = []
    try:
        for service in SERVICES:
            extra = {"MINICLOUD_HEALTH_PORT": str(port)} if service == "gateway" else {"MINICLOUD_HEALTH_PORT": "0"}
            out = open(log_dir / f"{service}.log", "w") if log_dir else None  # noqa: SIM115 (closed with the process)
            procs.append(start_service(service, {**base, **extra}, out))
        for host_id, (gpus, domain) in (agents or {}).items():
            log = open(log_dir / f"agent-{host_id}.log", "w") if log_dir else subprocess.DEVNULL  # noqa: SIM115
            procs.append(start_service("agent", {**agent_env(redis_url, host_id, gpus, domain, workdir), **env}, log))
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(endpoint + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            dead = [p.args for p in procs if p.poll() is not None]
            assert not dead, f"a service exited at start: {dead}"
            assert time.monotonic() < deadline, "the gateway was not ready within 60 s"
            time.sleep(0.2)
        yield Cloud(endpoint, key, redis_url, log_dir)
    finally:
        stop_services(procs)
        kill_tasks(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def poll(what: str, within_s: float, check: Any, every_s: float = 0.1) -> Any:
    """Call ``check()`` until it returns something truthy; fail after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {within_s} s waiting for {what}"
        time.sleep(every_s)


def settled(client: httpx.Client, accepted: httpx.Response, op: dict[str, str], within_s: float = 15) -> dict[str, Any]:
    """The outcome (done or rejected) of a command the API accepted with 202."""
    assert accepted.status_code == 202, accepted.text
    where = accepted.headers["Location"]

    def outcome() -> dict[str, Any] | None:
        doc: dict[str, Any] = client.get(where, headers=op).json()
        return doc if doc["status"] != "pending" else None

    result: dict[str, Any] = poll(f"{where} to settle", within_s, outcome)
    return result


def host_body(i: int, gpus: int = 8, sku: str = "h100-80gb-sxm", domain: str = "nvl0") -> dict[str, Any]:
    return {
        "host_id": f"h{i:02d}",
        "region": "eu-1",
        "zone": "eu-1a",
        "rack": "eu-1a-r01",
        "nvlink_domain": f"eu-1a-r01-{domain}",
        "sku": sku,
        "gpu_count": gpus,
    }


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
