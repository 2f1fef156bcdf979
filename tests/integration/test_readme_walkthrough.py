"""The README's first-job walkthrough, run as it stands against the whole cloud (five
service processes on a real Redis): a tenant sees prices, gets a quote, submits a gang
job, watches it get placed, completes it, and reads the invoice line that explains the
charge — with the CLI alone. Issue 5's "done when"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cloud import LOCAL_HOSTS, Cloud, cents, local_cloud, poll

pytestmark = [pytest.mark.broker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- walkthrough:start -->\n```bash\n(.*?)```\n<!-- walkthrough:end -->", readme, re.S)
    assert m, "README.md has no walkthrough block"
    return m.group(1)


@pytest.fixture
def cloud(redis_url: str) -> Iterator[Cloud]:
    with local_cloud(redis_url) as c:
        yield c


@pytest.fixture
def stack(redis_url: str) -> Iterator[Cloud]:
    """The cloud as make run starts it: the services and the local hosts' agents."""
    with local_cloud(redis_url, agents=LOCAL_HOSTS) as c:
        yield c


def test_the_readme_walkthrough_runs_as_written(stack: Cloud, tmp_path: Path) -> None:
    cloud = stack
    hosts = f"{cloud.endpoint}/v1/hosts"
    op = {"Authorization": f"Bearer {cloud.operator_key}"}
    poll("the agents' hosts", 30, lambda: len(httpx.get(hosts, headers=op).json()["items"]) == len(LOCAL_HOSTS))
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "compose.env").write_text(f"MINICLOUD_OPERATOR_KEY={cloud.operator_key}\n")
    script = walkthrough() + 'echo "JOB=$JOB"\necho "TENANT_KEY=$MINICLOUD_API_KEY"\n'
    env = {
        **os.environ,
        "MINICLOUD_ENDPOINT": cloud.endpoint,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "COLUMNS": "200",
    }
    env.pop("MINICLOUD_API_KEY", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{out}\nstderr:\n{done.stderr}"
    job = re.search(r"^JOB=(wl-\S+)$", out, re.M)
    key = re.search(r"^TENANT_KEY=(mck_\S+)$", out, re.M)
    assert job, out
    assert key, out
    # What a person reads: the quote, the placement, the charge, the line and its reasons.
    assert "16 x h100-80gb-sxm (on_demand) for 2.0 h: 95.68 USD" in out
    # The program ran: both ranks' output through the CLI, and it ended by itself.
    assert "[0]  rank 0 of 2" in out.splitlines(), out
    assert "[1]  rank 1 of 2" in out.splitlines(), out
    assert "exit code: 0" in out, out
    assert re.search(r"charged: \d+\.\d\d USD for \d+ GPU-seconds", out), out
    assert re.search(r"GPU time: h100-80gb-sxm in eu-1, on_demand, catalog \S+: [\d.]+ GPU-hours x 2\.99", out), out
    assert "llm-pretrain" in out.split("GPU time:")[-1], "the explanation names the workload"

    # The charge, computed here from the allocation's own times and the price list.
    def cli(*args: str) -> Any:
        r = subprocess.run(
            ["minicloud", *args, "--json"],
            env={**env, "MINICLOUD_API_KEY": key.group(1)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    w = cli("workloads", "get", job.group(1))
    start = datetime.fromisoformat(w["allocation"]["started_at"])
    seconds = int(datetime.fromisoformat(w["ended_at"]).timestamp() // 1) - int(start.timestamp() // 1)
    assert seconds >= 5
    usage, minimum = 16 * seconds, 16 * max(0, 60 - seconds)
    price = Decimal("2.99")
    expected = cents(usage * price / 3600) + cents(minimum * price / 3600)
    assert Decimal(w["charge"]["amount"]) == expected
    inv = poll(
        "the invoice's total",
        15,
        lambda: (i := cli("invoices", "show", start.strftime("%Y-%m"))) and Decimal(i["total"]) == expected and i,
    )
    assert inv["lines"][0]["gpu_seconds"] == usage


def test_operator_commands_and_refusals_through_the_cli(cloud: Cloud) -> None:
    env = {**os.environ, "MINICLOUD_ENDPOINT": cloud.endpoint, "MINICLOUD_API_KEY": cloud.operator_key}
    bindir = Path(sys.executable).parent

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bindir / "minicloud"), *args], env=env, capture_output=True, text=True, timeout=60)

    place = ["--sku", "l40s-48gb-pcie", "--region", "us-1", "--zone", "us-1a", "--rack", "r1", "--gpus", "4"]
    ok = run("hosts", "register", "l01", *place)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("done: host l01 registered")
    dup = run("hosts", "register", "l01", *place)
    assert dup.returncode == 1
    assert dup.stderr.startswith("minicloud: duplicate_host: ")
    assert dup.stderr.count("\n") == 1, "one clear line, no traceback"
    hosts = json.loads(run("hosts", "list", "--json").stdout)
    assert [(h["host_id"], h["gpus"], h["free"]) for h in hosts] == [("l01", 4, 4)]
    assert run("hosts", "drain", "l01", "--reason", "bios").returncode == 0
    cap = json.loads(run("capacity", "--json").stdout)
    assert (cap["fleet"]["total"], cap["fleet"]["free"], cap["fleet"]["draining"]) == (4, 0, 4)
    assert run("hosts", "fault", "l01", "2", "--code", "xid-48").returncode == 0
    again = run("hosts", "fault", "l01", "2")
    assert again.returncode == 1
    assert "already_faulted" in again.stderr
    missing = run("hosts", "drain", "nope")
    assert (missing.returncode, missing.stderr.strip()) == (1, "minicloud: not_found: no host nope")
    past = run("prices", "publish", "old", "--effective-at", "2020-01-01T00:00:00Z", "--price", "l40s-48gb-pcie:spot:1")
    assert past.returncode == 1
    assert past.stderr.startswith("minicloud: bad_catalog: ")
    bad = run("prices", "publish", "x", "--effective-at", "2030-01-01T00:00:00Z", "--price", "l40s-48gb-pcie")
    assert bad.returncode == 2
    avail = json.loads(run("availability", "--json").stdout)["items"]
    assert avail == [{"sku": "l40s-48gb-pcie", "region": "us-1", "free_gpus": 0, "max_free_on_one_host": 0}]
    unreachable = subprocess.run(
        [str(bindir / "minicloud"), "capacity"],
        env={**env, "MINICLOUD_ENDPOINT": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 3
