"""Workloads really run (issue: host agent): the five services and host agents as
local processes on a real Redis, the agents with the process runtime, driven through
the public API as tenants are.

What is checked: a gang's ranks get their distributed environment and their output
comes back through the API; exit 0 on every node completes the workload and the
meter stops at the exit; a non-zero exit fails it with the code and the node, and the
gang's other node is stopped; cancel sends SIGTERM, then SIGKILL after the grace;
an agent killed with SIGKILL is noticed (host unreachable after the silence, work
requeued, nothing charged after the last heartbeat) and, restarted, stops what was
released meanwhile; an agent killed and restarted quickly adopts its running task and
reports its exit once; another tenant cannot read a workload's log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from minicloud_shared.contracts.topology import AGENT_EVENTS
from minicloud_shared.testing.processes import start_service, stop_services
from minicloud_shared.testing.pytest_plugin import with_database
from minicloud_shared.testing.redis_server import RedisServer
from tests.support.cloud import Cloud, agent_env, kill_tasks, local_cloud, poll

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SILENCE_S = 10  # inventory marks a host unreachable after this much silence (heartbeats every 0.5 s)
GRACE_S = 10  # scheduling's SIGTERM-to-SIGKILL grace (actions.STOP_GRACE_S)
NOTICE_S = 4  # the spot notice (MINICLOUD_SPOT_NOTICE_S)
PY = sys.executable


class Agents:
    def __init__(self, cloud: Cloud, root: Path) -> None:
        self.cloud, self.root = cloud, root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, host_id: str, gpus: str = "8 x h100-80gb-sxm", domain: str = "eu-1a-r01-nvl0") -> None:
        out = (self.root / f"agent-{host_id}.log").open("a")
        env = agent_env(self.cloud.redis_url, host_id, gpus, domain, self.root / "tasks")
        self.procs[host_id] = start_service("agent", env, out)

    def kill(self, host_id: str) -> None:
        p = self.procs.pop(host_id)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    def stop(self) -> None:
        stop_services(self.procs.values())
        kill_tasks(self.root / "tasks")

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("agent-*.log")))


@pytest.fixture(scope="module")
def world(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cloud, Agents]]:
    root = tmp_path_factory.mktemp("agents")
    redis_url = with_database(redis_server.url, 15)  # emptied first; the module holds it while it runs
    redis.Redis.from_url(redis_url).flushdb()
    env = {"MINICLOUD_HOST_SILENCE_S": str(SILENCE_S), "MINICLOUD_SPOT_NOTICE_S": str(NOTICE_S)}
    with local_cloud(redis_url, log_dir=root, **env) as cloud:
        agents = Agents(cloud, root)
        try:
            for h in ("a1", "a2"):
                agents.start(h)
            agents.start("b1", "1 x l40s-48gb-pcie", "b1")
            agents.start("c1", "1 x a10-24gb-pcie", "c1")
            agents.start("s1", "1 x h200-141gb-sxm", "s1")
            with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
                poll("the agents' hosts registered", 30, lambda: len(_hosts(client, cloud)) == 5)
            yield cloud, agents
        except BaseException:
            print(cloud.logs()[-20000:], agents.logs()[-20000:])
            raise
        finally:
            agents.stop()


def _hosts(client: httpx.Client, cloud: Cloud) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/v1/hosts", headers=cloud.op).json()["items"]
    return items


def tenant(client: httpx.Client, cloud: Cloud, tenant_id: str) -> dict[str, str]:
    r = client.post("/v1/tenants", json={"tenant_id": tenant_id, "name": tenant_id}, headers=cloud.op)
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/tenants/{tenant_id}/keys", headers=cloud.op)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def submit(client: httpx.Client, key: dict[str, str], name: str, code: str, **kw: Any) -> str:
    body = {
        "name": name,
        "kind": "training",
        "gpus_per_node": 8,
        "sku": "h100-80gb-sxm",
        "image": "minicloud/workload:bookworm",
        "command": [PY, "-u", "-c", code],
        **kw,
    }
    r = client.post("/v1/workloads", json=body, headers={**key, "Idempotency-Key": name})
    assert r.status_code == 202, r.text
    return str(r.headers["Location"])


def ended(client: httpx.Client, key: dict[str, str], where: str, within_s: float = 30) -> dict[str, Any]:
    doc: dict[str, Any] = poll(
        f"{where} ended", within_s, lambda: (d := client.get(where, headers=key).json())["status"] == "ended" and d
    )
    return doc


def log_lines(client: httpx.Client, key: dict[str, str], where: str) -> list[dict[str, Any]]:
    r = client.get(f"{where}/logs", headers=key)
    assert r.status_code == 200, r.text
    lines: list[dict[str, Any]] = r.json()["lines"]
    return lines


def ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def agent_events(cloud: Cloud, kind: str, allocation_id: str) -> list[dict[str, str]]:
    r = redis.Redis.from_url(cloud.redis_url, decode_responses=True)
    rows = r.xrange(AGENT_EVENTS)
    return [
        f
        for _, f in rows
        if f["type"] == f"minicloud.agent.{kind}" and json.loads(f["data"])["allocation_id"] == allocation_id
    ]


def test_a_gang_runs_prints_its_ranks_completes_by_itself_and_is_charged_for_its_run(
    world: tuple[Cloud, Agents],
) -> None:
    cloud, _ = world
    code = (
        "import os, time\n"
        "print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], 'master', os.environ['MASTER_ADDR'],"
        " os.environ['MASTER_PORT'], 'gpus', os.environ['CUDA_VISIBLE_DEVICES'])\n"
        "time.sleep(3)\n"
        "print('done', os.environ['RANK'])\n"
    )
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        key = tenant(client, cloud, "runner")
        where = submit(client, key, "gang", code, nodes=2)
        doc = ended(client, key, where)
        assert (doc["outcome"], doc["exit_code"]) == ("completed", 0), doc
        assert doc["reason"] == "all 2 nodes exited with code 0"
        lines = [(ln["rank"], ln["stream"], ln["line"]) for ln in log_lines(client, key, where)]
        for rank in (0, 1):
            said = [text for r, s, text in lines if r == rank and s == "stdout"]
            assert said[0].startswith(f"rank {rank} of 2 master 127.0.0.1 "), lines
            assert said[0].endswith("gpus 0,1,2,3,4,5,6,7"), lines
            assert said[-1] == f"done {rank}", lines
        # The meter stopped at the exit: about 3 s of 16 GPUs, not the time to notice.
        run_s = ts(doc["ended_at"]) - ts(doc["started_at"])
        assert 3 <= run_s < 8, doc
        charge = poll("the charge", 20, lambda: client.get(where, headers=key).json().get("charge"))
        # Metered: the run in whole seconds, 16 GPUs; the rest is the 60 s minimum
        # charged for work that ends itself sooner (billing's rule, as for complete).
        metered = charge["gpu_seconds"] - charge["minimum_gpu_seconds"]
        assert abs(metered - 16 * run_s) <= 16, (charge, run_s)
        assert charge["gpu_seconds"] == 16 * 60, charge
        # The CLI prints them, rank first.
        env = {**os.environ, "MINICLOUD_ENDPOINT": cloud.endpoint, "MINICLOUD_API_KEY": key["Authorization"][7:]}
        cli = Path(PY).parent / "minicloud"
        wid = where.rsplit("/", 1)[1]
        shown = subprocess.run(
            [cli, "workloads", "logs", wid, "-f"], env=env, capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0, shown.stderr
        assert "[1]  done 1" in shown.stdout.splitlines(), shown.stdout
        got = subprocess.run([cli, "workloads", "get", wid], env=env, capture_output=True, text=True, timeout=60)
        assert "exit code: 0" in got.stdout, got.stdout
        # Followed as server-sent events: every line, then the end.
        with client.stream("GET", f"{where}/logs?follow=true", headers=key) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            body = "".join(r.iter_text())
        assert body.count("event: line") == len(lines)
        assert "event: end" in body


def test_a_non_zero_exit_fails_the_gang_with_its_code_and_node_and_stops_the_other_node(
    world: tuple[Cloud, Agents],
) -> None:
    cloud, _ = world
    code = (
        "import os, sys, time\n"
        "if os.environ['RANK'] == '1':\n"
        "    time.sleep(1); print('giving up', file=sys.stderr); sys.exit(3)\n"
        "print('working', flush=True); time.sleep(600)\n"
    )
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        key = tenant(client, cloud, "failer")
        where = submit(client, key, "fails", code, nodes=2)
        doc = ended(client, key, where)
        assert (doc["outcome"], doc["exit_code"]) == ("failed", 3), doc
        rank1_host = doc["allocation"]["hosts"][1]
        assert doc["failed_host"] == rank1_host
        assert doc["reason"].startswith(f"node 1 on host {rank1_host} exited with code 3")
        lines = log_lines(client, key, where)
        assert any(ln["stream"] == "stderr" and ln["line"] == "giving up" for ln in lines), lines
        # Rank 0 was stopped (SIGTERM: it did not trap it).
        alloc = doc["allocation"]["allocation_id"]
        stopped = poll(
            "rank 0 stopped",
            20,
            lambda: (
                agent_events(cloud, "task_exited", alloc)
                if len(agent_events(cloud, "task_exited", alloc)) >= 2
                else None
            ),
        )
        codes = sorted((json.loads(f["data"])["rank"], json.loads(f["data"])["exit_code"]) for f in stopped)
        assert codes == [(0, 143), (1, 3)], codes


def test_cancel_sends_sigterm_then_sigkill_after_the_grace_period(world: tuple[Cloud, Agents]) -> None:
    cloud, _ = world
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('got SIGTERM, ignoring it', flush=True))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        key = tenant(client, cloud, "stubborn")
        where = submit(client, key, "stubborn", code)
        poll("its first line", 20, lambda: log_lines(client, key, where))
        asked = time.monotonic()
        assert client.post(f"{where}/cancel", headers=key).status_code == 202
        doc = ended(client, key, where)
        assert doc["outcome"] == "cancelled"
        poll("SIGTERM seen", 10, lambda: any("got SIGTERM" in ln["line"] for ln in log_lines(client, key, where)))
        alloc = doc["allocation"]["allocation_id"]
        exits = poll("the kill", GRACE_S + 15, lambda: agent_events(cloud, "task_exited", alloc))
        killed_after = time.monotonic() - asked
        data = json.loads(exits[0]["data"])
        assert (data["exit_code"], data["stopped"]) == (137, True), data
        assert killed_after >= GRACE_S - 1, killed_after


def test_spot_work_gets_sigterm_at_its_notice_and_sigkill_when_the_notice_ends(world: tuple[Cloud, Agents]) -> None:
    cloud, _ = world
    spot_code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('notice: checkpointing', flush=True))\n"
        "print('spot running', flush=True)\n"
        "time.sleep(600)\n"
    )
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        key = tenant(client, cloud, "spotty")
        h200 = {"gpus_per_node": 1, "sku": "h200-141gb-sxm"}
        spot = submit(client, key, "spot", spot_code, price_class="spot", **h200)
        poll("the spot work running", 20, lambda: log_lines(client, key, spot))
        alloc = client.get(spot, headers=key).json()["allocation"]["allocation_id"]
        urgent = submit(client, key, "urgent", "print('on demand')", **h200)
        noticed = poll(
            "the notice's SIGTERM",
            20,
            lambda: any("notice: checkpointing" in ln["line"] for ln in log_lines(client, key, spot)),
        )
        assert noticed
        t_notice = time.monotonic()
        exits = poll(
            "the kill at the end of the notice", NOTICE_S + 15, lambda: agent_events(cloud, "task_exited", alloc)
        )
        data = json.loads(exits[0]["data"])
        assert (data["exit_code"], data["stopped"]) == (137, True), data
        assert time.monotonic() - t_notice >= NOTICE_S - 1.5  # it had its notice
        doc = ended(client, key, urgent)
        assert (doc["outcome"], doc["exit_code"]) == ("completed", 0), doc
        requeued = client.get(spot, headers=key).json()
        assert requeued["interruptions"] == {"preempted": 1}, requeued
        assert client.post(f"{spot}/cancel", headers=key).status_code == 202
        ended(client, key, spot)


def test_a_silent_host_is_lost_its_work_requeued_uncharged_after_the_last_heartbeat_and_stopped_when_it_returns(
    world: tuple[Cloud, Agents],
) -> None:
    cloud, agents = world
    code = "import time\nprint('on the L40S', flush=True)\ntime.sleep(600)\n"
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        key = tenant(client, cloud, "lost")
        where = submit(client, key, "lost", code, gpus_per_node=1, sku="l40s-48gb-pcie")
        poll("running", 20, lambda: log_lines(client, key, where))
        first = client.get(where, headers=key).json()
        alloc = first["allocation"]["allocation_id"]
        agents.kill("b1")  # its program keeps running: it is the host that went silent
        killed = time.time()
        doc = poll(
            "requeued as host_lost",
            SILENCE_S + 15,
            lambda: (d := client.get(where, headers=key).json())["status"] == "queued" and d,
        )
        assert doc["interruptions"] == {"host_lost": 1}, doc  # then waits for capacity: the only L40S is lost
        host = client.get("/v1/hosts/b1", headers=cloud.op).json()
        assert host["reachable"] is False, host
        assert host["free"] == 0, host
        # Nothing charged after the last heartbeat: the released span ends within a
        # heartbeat or two of the kill.
        charge = poll("the charge", 20, lambda: client.get(where, headers=key).json().get("charge"))
        started = ts(first["started_at"])
        assert charge["allocation_id"] == alloc
        assert charge["gpu_seconds"] <= killed - started + 2, (charge, killed - started)
        # Back: reconciled, not trusted blindly: the task released meanwhile is stopped
        # (its StopTask waited in the host's stream), and the workload runs again.
        agents.start("b1", "1 x l40s-48gb-pcie", "b1")
        exits = poll("the orphan stopped", 30, lambda: agent_events(cloud, "task_exited", alloc))
        assert json.loads(exits[0]["data"])["stopped"] is True
        again = poll(
            "placed again",
            30,
            lambda: (
                (d := client.get(where, headers=key).json())["status"] == "running"
                and d["allocation"]["allocation_id"] != alloc
                and d
            ),
        )
        assert again["interruptions"] == {"host_lost": 1}
        assert client.post(f"{where}/cancel", headers=key).status_code == 202
        ended(client, key, where)


def test_an_agent_killed_mid_run_adopts_its_task_and_reports_its_exit_once(world: tuple[Cloud, Agents]) -> None:
    cloud, agents = world
    code = (
        "import time\n"
        "print('started once', flush=True)\n"
        "for i in range(6):\n"
        "    print('tick', i, flush=True); time.sleep(0.5)\n"
    )
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        key = tenant(client, cloud, "adopted")
        where = submit(client, key, "adopted", code, gpus_per_node=1, sku="a10-24gb-pcie")
        poll("running", 20, lambda: log_lines(client, key, where))
        agents.kill("c1")
        time.sleep(3.5)  # the program ends while its agent is down
        agents.start("c1", "1 x a10-24gb-pcie", "c1")
        doc = ended(client, key, where)
        assert (doc["outcome"], doc["exit_code"]) == ("completed", 0), doc
        assert not doc.get("interruptions"), doc  # back within the silence: not lost
        lines = [ln["line"] for ln in log_lines(client, key, where)]
        assert lines.count("started once") == 1, lines  # not run twice
        assert lines[1:] == [f"tick {i}" for i in range(6)], lines  # none lost, none twice
        alloc = doc["allocation"]["allocation_id"]
        ids = {f["id"] for f in agent_events(cloud, "task_exited", alloc)}
        assert len(ids) == 1  # one exit (a report repeated after a crash has the same id)
        # The run ended while the agent was down: the meter stops at the program's exit.
        assert ts(doc["ended_at"]) - ts(doc["started_at"]) < 4.5, doc


def test_only_its_tenant_reads_a_workloads_log_and_bad_runs_are_refused(world: tuple[Cloud, Agents]) -> None:
    cloud, _ = world
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        owner = tenant(client, cloud, "owner")
        other = tenant(client, cloud, "other")
        where = submit(client, owner, "secret", "print('secret output')", gpus_per_node=1, sku="a10-24gb-pcie")
        ended(client, owner, where)
        assert [ln["line"] for ln in log_lines(client, owner, where)] == ["secret output"]
        for path in (f"{where}/logs", f"{where}/logs?follow=true"):
            r = client.get(path, headers=other)
            assert r.status_code == 404, r.text
            assert "secret" not in r.text
        # A program that does not exist fails the workload with the reason.
        missing = submit(
            client, owner, "missing", "", command=["no-such-program-x"], gpus_per_node=1, sku="a10-24gb-pcie"
        )
        doc = ended(client, owner, missing)
        assert (doc["outcome"], doc["exit_code"]) == ("failed", -1), doc
        assert "not found" in doc["reason"]
        for bad, says in (
            ({"image": "x"}, "command is missing"),
            ({"command": ["x"]}, "image is missing"),
            ({"image": "x", "command": ["x"], "env": {"RANK": "3"}}, "set by the cloud"),
            ({"image": "x", "command": ["x"], "env": {"A B": "1"}}, "not an environment variable name"),
            ({"port": 80}, "need an image"),
        ):
            body = {"name": "bad", "kind": "training", "gpus_per_node": 1, **bad}
            r = client.post("/v1/workloads", json=body, headers={**owner, "Idempotency-Key": f"bad-{says}"})
            assert r.status_code == 422, (bad, r.text)
            assert says in r.text, (bad, r.text)
