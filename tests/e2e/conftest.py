"""The compose stack on locally built images, for the end-to-end tests.

Builds what is missing (``infra/images``), writes a fresh set of Redis users, starts
the stack under its own project name and ports, waits until every service is
healthy, and removes it (volumes too) afterwards. Needs Docker and compose: skipped
with the reason on a laptop without them, failed under ``CI=true``.

The stack runs the demo's kind of clock: simulated time, shared by every service (an
anchored accelerated clock), ``FACTOR`` times faster than real time, starting now — so a
short demo run covers a simulated day in a minute. Amounts are computed from the event
times the services publish, which are in that simulated time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from minicloud_gateway.identity import new_key
from minicloud_shared.acl import env_var, write
from minicloud_shared.testing.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("inventory", "scheduling", "metering", "billing", "gateway")
AGENTS = ("agent-h1", "agent-h2", "agent-l1")  # compose services; their hosts:
AGENT_HOSTS = ("local-h1", "local-h2", "local-l1")
OPERATOR_KEY = new_key()[1]
FACTOR = 1440  # a simulated day per real minute


@dataclass
class Stack:
    project: str
    compose: list[str]
    env: dict[str, str]
    redis_port: int
    passwords: dict[str, str]
    api: str  # the gateway's public API
    clock: str  # the services' clock spec (MINICLOUD_CLOCK)

    def url(self, user: str) -> str:
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.redis_port}/0"

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.compose, *args], cwd=ROOT, env=self.env, check=check, capture_output=True, text=True, timeout=300
        )


def _compose() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    compose = _compose()
    docker_ok = compose is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    if not docker_ok:
        why = "the end-to-end tests need Docker and docker compose"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}, and CI=true", pytrace=False)
        pytest.skip(why)
    assert compose is not None
    for script in ("infra/images/redis.sh", "infra/images/prometheus.sh", "infra/images/services.sh"):
        subprocess.run([str(ROOT / script)], cwd=ROOT, check=True, timeout=1200)
    tmp = tmp_path_factory.mktemp("stack")
    passwords = write(tmp / "users.acl", tmp / "compose.env", AGENT_HOSTS)
    project = f"mce2e{os.getpid()}"
    network = f"{project}-workloads"  # the agents' workload containers, removed with the stack
    now = time.time()
    clock = f"accelerated:{FACTOR}@{datetime.fromtimestamp(now, UTC).isoformat()}~{now}"
    env = {
        **os.environ,
        **{env_var(u): p for u, p in passwords.items()},
        "MINICLOUD_ACL_FILE": str(tmp / "users.acl"),
        "MINICLOUD_REDIS_PORT": str(free_port()),
        "MINICLOUD_GATEWAY_PORT": str(free_port()),
        "MINICLOUD_PROMETHEUS_PORT": str(free_port()),
        "MINICLOUD_RECLAIM_IDLE_MS": "5000",
        "MINICLOUD_OPERATOR_KEY": OPERATOR_KEY,  # a killed consumer's entries are taken over after 5 s
        "MINICLOUD_CLOCK": clock,
        "MINICLOUD_TICK_S": "300",  # simulated seconds: every 0.2 s real
        "MINICLOUD_METER_INTERVAL_S": "3600",  # a reading per simulated hour (2.5 s real)
        "MINICLOUD_RATE_LIMIT_PER_S": "100000",
        "MINICLOUD_HOST_SILENCE_S": str(30 * FACTOR),  # heartbeats are 5 s apart in real time
        "MINICLOUD_WORKLOAD_NETWORK": network,
        "MINICLOUD_CAPACITY_SAMPLE_S": "1",
    }
    api = f"http://127.0.0.1:{env['MINICLOUD_GATEWAY_PORT']}"
    st = Stack(project, [*compose, "-p", project], env, int(env["MINICLOUD_REDIS_PORT"]), passwords, api, clock)
    try:
        st.run("up", "-d")
        for service in (*SERVICES, *AGENTS, "prometheus"):
            subprocess.run([str(ROOT / "infra/wait-healthy.sh"), project, service, "120"], check=True, timeout=150)
        yield st
    finally:
        logs = st.run("logs", "--tail=30", check=False).stdout
        st.run("stop", *AGENTS, check=False)
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"network={network}"], capture_output=True, text=True)
        if left.stdout.split():
            subprocess.run(["docker", "rm", "-f", *left.stdout.split()], capture_output=True, timeout=60)
        st.run("down", "-v", check=False)  # the workloads' network too, now empty
        if os.environ.get("MINICLOUD_E2E_LOGS"):
            print(logs)
