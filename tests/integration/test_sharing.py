"""GPU shares and CPU-only work through the whole cloud: the five services and a host
agent (process runtime) on a real Redis, driven over the public API. Shares of one GPU
pack onto it by best fit, CPU and memory are never over-committed (work waits, with a
reason), each runs with its limits in its environment, and each is billed by the
documented rule (docs/billing.md): a share at the SKU's price x the share, CPU-only
work per vCPU-hour and GiB-hour."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from minicloud_shared.pricing import base_catalog, line_amount
from tests.support.cloud import Cloud, local_cloud, poll, settled

pytestmark = [pytest.mark.broker, pytest.mark.slow]

HOST = "sh1"
H100 = "h100-80gb-sxm"
CATALOG = base_catalog()


def row(item: str) -> Decimal:
    price = CATALOG.price(item, "*", "on_demand")
    assert price is not None
    return price


@pytest.fixture
def cloud(redis_url: str, tmp_path: Path) -> Iterator[Cloud]:
    # One agent: 2 H100s given as shares, 4 vCPU and 8 GiB for workloads.
    agents = {HOST: ("2 x h100-80gb-sxm", "eu-1a-r01-nvl0")}
    env = {
        "MINICLOUD_AGENT_GPU_MODE": "shared",
        "MINICLOUD_AGENT_CPU_MILLI": "4000",
        "MINICLOUD_AGENT_MEMORY_MIB": "8192",
    }
    with local_cloud(redis_url, log_dir=tmp_path, agents=agents, **env) as c:
        yield c


@dataclass
class Tenant:
    """A tenant over the public API: submits, reads and waits for its workloads."""

    client: httpx.Client
    key: dict[str, str]

    @classmethod
    def create(cls, client: httpx.Client, op: dict[str, str], tenant_id: str = "acme") -> Tenant:
        assert (
            client.post("/v1/tenants", json={"tenant_id": tenant_id, "name": tenant_id}, headers=op).status_code == 201
        )
        r = client.post(f"/v1/tenants/{tenant_id}/keys", headers=op)
        return cls(client, {"Authorization": f"Bearer {r.json()['key']}"})

    def submit(self, name: str, body: dict[str, Any]) -> str:
        r = self.client.post(
            "/v1/workloads", json={"name": name, **body}, headers={**self.key, "Idempotency-Key": name}
        )
        assert r.status_code == 202, r.text
        return str(r.headers["Location"])

    def doc(self, where: str) -> dict[str, Any]:
        got: dict[str, Any] = self.client.get(where, headers=self.key).json()
        return got

    def running(self, where: str) -> dict[str, Any]:
        found: dict[str, Any] = poll(
            f"{where} running", 30, lambda: (d := self.doc(where))["status"] == "running" and d
        )
        return found

    def logged(self, where: str, text: str) -> str:
        def line() -> str | None:
            lines = self.client.get(f"{where}/logs", headers=self.key).json()["lines"]
            return next((ln["line"] for ln in lines if text in ln["line"]), None)

        found: str = poll(f"{text} in the log", 30, line)
        return found

    def complete(self, where: str) -> None:
        assert self.client.post(f"{where}/complete", headers=self.key).status_code == 202


def program(tag: str) -> list[str]:
    """Prints what it was given, then runs until stopped."""
    code = (
        "import os, time\n"
        f"print('{tag}', os.environ.get('MINICLOUD_GPU_MILLI'), os.environ.get('MINICLOUD_CPU_MILLI'),"
        " os.environ.get('MINICLOUD_MEMORY_MIB'), repr(os.environ.get('CUDA_VISIBLE_DEVICES')),"
        " os.environ.get('MINICLOUD_GPU_MEMORY_MIB'), flush=True)\n"
        "time.sleep(120)\n"
    )
    return ["python3", "-c", code]


def test_shares_and_cpu_only_work_are_placed_without_overcommitment_run_and_are_billed(cloud: Cloud) -> None:
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        op = cloud.op

        def host() -> dict[str, Any] | None:
            r = client.get(f"/v1/hosts/{HOST}", headers=op)
            return r.json() if r.status_code == 200 else None

        h = poll("the agent's host", 30, host)
        assert (h["gpu_mode"], h["cpu_milli"], h["memory_mib"]) == ("shared", 4000, 8192)
        acme = Tenant.create(client, op)
        key, doc, running, logged = acme.key, acme.doc, acme.running, acme.logged

        def submit(name: str, **shape: Any) -> str:
            return acme.submit(
                name, {"kind": "dev", "image": "minicloud/workload:bookworm", "command": program(name), **shape}
            )

        share = {"gpus_per_node": 0, "cpu_milli": 500, "memory_mib": 1024}
        a = running(submit("share-a", gpu_milli=600, **share))
        b = running(submit("share-b", gpu_milli=250, **share))
        c = running(submit("share-c", gpu_milli=500, **share))
        gpu_of = {n: d["allocation"]["gpu_indices"][0] for n, d in (("a", a), ("b", b), ("c", c))}
        # Best fit: the 250 goes to the GPU the 600 left 400 of; the 500 does not fit
        # the 150 left there, so it starts the other GPU.
        assert gpu_of["a"] == gpu_of["b"]
        assert gpu_of["c"] != gpu_of["a"]
        assert (a["allocation"]["gpus"], a["allocation"]["gpu_milli"]) == (1, 600)
        # Its limits reach the program: a quarter of an 80 GB GPU's memory for the 250.
        assert logged(f"/v1/workloads/{b['workload_id']}", "share-b").split()[1:] == [
            "250",
            "500",
            "1024",
            repr("0"),
            str(81_920 * 250 // 1000),
        ]

        # CPU only: 2 vCPU more (3.5 of the host's 4 taken), then 1 vCPU more must wait.
        cpu = {"gpus_per_node": 0, "cpu_milli": 2000, "memory_mib": 2048}
        where_d = submit("cpu-d", **cpu)
        d = running(where_d)
        assert d["allocation"]["gpus"] == 0
        assert logged(where_d, "cpu-d").split()[1:4] == ["None", "2000", "2048"]
        assert logged(where_d, "cpu-d").split()[4] == repr("")  # no GPU visible
        where_e = submit("cpu-e", gpus_per_node=0, cpu_milli=1000, memory_mib=1024)
        waiting = poll("cpu-e to wait", 20, lambda: (x := doc(where_e)).get("pending_code") and x)
        assert waiting["status"] == "queued"
        assert waiting["pending_code"] == "capacity"
        assert "1 vCPU" in waiting["pending_reason"]
        # A whole GPU cannot go where shares run: both GPUs hold some.
        where_w = submit("whole", gpus_per_node=1)
        assert poll("whole to wait", 20, lambda: doc(where_w).get("pending_code")) == "capacity"

        # d ends: e runs in its CPU.
        assert client.post(f"{where_d}/complete", headers=key).status_code == 202
        running(where_e)
        for w in (a, b, c):
            assert client.post(f"/v1/workloads/{w['workload_id']}/complete", headers=key).status_code == 202
        running(where_w)  # the GPUs are free again
        for where in (where_e, where_w):
            assert client.post(f"{where}/complete", headers=key).status_code == 202

        # Billed by the rule: a share at the H100's price x its share, in
        # thousandth-GPU-seconds; CPU-only work per vCPU-hour and GiB-hour.
        def charge(where: str) -> dict[str, Any]:
            got: dict[str, Any] = poll(f"{where}'s charge", 30, lambda: doc(where).get("charge"))
            return got

        share_price = row(H100) / 1000
        for w, milli in ((a, 600), (b, 250), (c, 500)):
            ch = charge(f"/v1/workloads/{w['workload_id']}")
            assert ch["gpu_seconds"] % milli == 0  # whole seconds of its thousandths
            assert ch["gpu_seconds"] >= 60 * milli  # at least the minimum
            assert Decimal(ch["amount"]) == line_amount(ch["gpu_seconds"], share_price)
        ch = charge(where_d)
        seconds = ch["gpu_seconds"] // 2000
        assert ch["gpu_seconds"] == seconds * 2000
        expected = line_amount(seconds * 2000, row("cpu") / 1000) + line_amount(seconds * 2048, row("memory") / 1024)
        assert Decimal(ch["amount"]) == expected

        month = datetime.now(UTC).strftime("%Y-%m")

        seen: list[object] = []

        def items() -> dict[str, dict[str, Any]] | None:
            inv = client.get(f"/v1/invoices/{month}", headers=key)
            lines = inv.json()["lines"] if inv.status_code == 200 else []
            # Each item's line (usage, or the minimum's for work that ran under a second).
            found = {ln["sku"]: ln for ln in sorted(lines, key=lambda ln: ln["kind"] == "usage")}
            seen[:] = [inv.status_code, sorted((ln["kind"], ln["sku"]) for ln in lines)]
            return found if {H100 + ":shared", "cpu", "memory", H100} <= set(found) else None

        try:
            lines = poll("share, CPU, memory and GPU lines on the invoice", 30, items)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the invoice had {seen}") from None
        assert Decimal(lines[H100 + ":shared"]["unit_price"]) == share_price
        assert Decimal(lines["cpu"]["unit_price"]) == row("cpu") / 1000
        assert Decimal(lines["memory"]["unit_price"]) == row("memory") / 1024
        assert "thousandth-GPU-seconds" in lines[H100 + ":shared"]["description"]

        # An operator may not change a GPU's mode while work runs on it.
        where_f = submit("share-f", gpu_milli=100, **share)
        running(where_f)
        refused = settled(client, client.post(f"/v1/hosts/{HOST}/gpu-mode", json={"gpu_mode": "whole"}, headers=op), op)
        assert (refused["status"], refused["code"]) == ("rejected", "host_busy")
        assert client.post(f"{where_f}/complete", headers=key).status_code == 202
        poll("share-f ended", 30, lambda: doc(where_f)["status"] == "ended")
        done = settled(client, client.post(f"/v1/hosts/{HOST}/gpu-mode", json={"gpu_mode": "whole"}, headers=op), op)
        assert done["status"] == "done"
        assert poll("the mode", 15, lambda: (x := host()) and x["gpu_mode"] == "whole")
        where_g = submit("share-g", gpu_milli=100, **share)
        refusal = poll(
            "share-g refused or waiting", 20, lambda: (x := doc(where_g)).get("code") or x.get("pending_code")
        )
        assert refusal == "no_such_capacity"


def test_a_shape_that_is_not_one_is_refused_with_a_reason(cloud: Cloud) -> None:
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        op = cloud.op
        assert client.post("/v1/tenants", json={"tenant_id": "acme", "name": "acme"}, headers=op).status_code == 201
        key = {"Authorization": f"Bearer {client.post('/v1/tenants/acme/keys', headers=op).json()['key']}"}
        for i, (shape, words) in enumerate(
            (
                ({"gpus_per_node": 1, "gpu_milli": 250}, "not both"),
                ({"gpus_per_node": 0, "gpu_milli": 250, "nodes": 2}, "one node"),
                ({"gpus_per_node": 0}, "must ask for cpu_milli and memory_mib"),
                ({"gpus_per_node": 0, "cpu_milli": 1000}, "must ask for cpu_milli and memory_mib"),
            )
        ):
            body = {"name": "bad", "kind": "dev", **shape}
            r = client.post("/v1/workloads", json=body, headers={**key, "Idempotency-Key": f"bad-{i}"})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "bad_shape"
            assert words in r.json()["error"]["message"]
        r = client.post(
            "/v1/workloads",
            json={"name": "huge", "kind": "dev", "gpus_per_node": 0, "cpu_milli": 64_000, "memory_mib": 1024},
            headers={**key, "Idempotency-Key": "huge"},
        )
        assert r.status_code == 202
        where = r.headers["Location"]
        refused = poll(
            "the 64-vCPU job refused",
            30,
            lambda: (d := client.get(where, headers=key).json())["status"] == "rejected" and d,
        )
        assert refused["code"] == "too_large"
        assert "64 vCPU" in refused["reason"]


@pytest.fixture
def mig_cloud(redis_url: str, tmp_path: Path) -> Iterator[Cloud]:
    # One agent: an H100 partitioned into 3g.40gb + 2g.20gb + 1g.10gb + 1g.10gb.
    agents = {"mg1": ("1 x h100-80gb-sxm", "eu-1a-r01-nvl0")}
    env = {
        "MINICLOUD_AGENT_GPU_MODE": "mig",
        "MINICLOUD_AGENT_MIG_LAYOUT": "3g.40gb,2g.20gb,1g.10gb,1g.10gb",
        "MINICLOUD_AGENT_CPU_MILLI": "4000",
        "MINICLOUD_AGENT_MEMORY_MIB": "8192",
    }
    with local_cloud(redis_url, log_dir=tmp_path, agents=agents, **env) as c:
        yield c


def test_a_mig_slice_is_placed_on_a_free_slice_of_its_profile_runs_on_it_and_is_billed(mig_cloud: Cloud) -> None:
    cloud = mig_cloud
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        op = cloud.op

        def host() -> dict[str, Any] | None:
            r = client.get("/v1/hosts/mg1", headers=op)
            return r.json() if r.status_code == 200 else None

        h = poll("the agent's host", 30, host)
        assert (h["gpu_mode"], h["mig_layout"]) == ("mig", ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])
        assert h["free"] == 0  # its GPU is sliced: none free to be given whole
        acme = Tenant.create(client, op)
        key, doc, running = acme.key, acme.doc, acme.running

        def submit(name: str, profile: str) -> str:
            code = (
                "import os, time\n"
                f"print('{name}', os.environ['MINICLOUD_MIG_PROFILE'], os.environ['CUDA_VISIBLE_DEVICES'],"
                " os.environ['MINICLOUD_GPU_MEMORY_MIB'], flush=True)\n"
                "time.sleep(120)\n"
            )
            shape = {"gpus_per_node": 0, "mig_profile": profile, "cpu_milli": 500, "memory_mib": 1024}
            run = {"image": "minicloud/workload:bookworm", "command": ["python3", "-c", code]}
            return acme.submit(name, {"kind": "inference", **shape, **run})

        def line(where: str, text: str) -> list[str]:
            return acme.logged(where, text).split()

        a, b = submit("small-a", "1g.10gb"), submit("small-b", "1g.10gb")
        running(a)
        running(b)
        devices = {line(w, n)[2] for w, n in ((a, "small-a"), (b, "small-b"))}
        assert len(devices) == 2  # two slices, two devices
        assert all(d.startswith("MIG-") for d in devices)
        assert line(a, "small-a")[1] == "1g.10gb"
        assert line(a, "small-a")[3] == str(81_920 // 8)  # one memory slot of eight
        c = submit("small-c", "1g.10gb")  # both 1g.10gb slices are taken
        waiting = poll("small-c to wait", 20, lambda: (x := doc(c)).get("pending_code") and x)
        assert waiting["pending_code"] == "capacity"
        assert "1g.10gb" in waiting["pending_reason"]
        big = submit("big", "3g.40gb")
        assert running(big)["allocation"]["mig_profile"] == "3g.40gb"
        # A whole GPU is never given from a partitioned host.
        r = client.post(
            "/v1/workloads",
            json={"name": "whole", "kind": "dev", "gpus_per_node": 1},
            headers={**key, "Idempotency-Key": "whole"},
        )
        assert poll("whole to wait", 20, lambda: doc(r.headers["Location"]).get("pending_code")) == "capacity"
        assert client.post(f"{a}/complete", headers=key).status_code == 202
        running(c)  # a's slice is c's now
        for w in (b, c, big):
            assert client.post(f"{w}/complete", headers=key).status_code == 202

        # Billed by the rule: slice-seconds at the H100's price x 143/1000 (1 of 7).
        slice_price = row(H100) * 143 / 1000
        ch = poll("a's charge", 30, lambda: doc(a).get("charge"))
        assert ch["gpu_seconds"] >= 60  # slice-seconds, the minimum at least
        assert Decimal(ch["amount"]) == line_amount(ch["gpu_seconds"], slice_price)
        month = datetime.now(UTC).strftime("%Y-%m")

        def slice_line() -> dict[str, Any] | None:
            inv = client.get(f"/v1/invoices/{month}", headers=key)
            lines = inv.json()["lines"] if inv.status_code == 200 else []
            return next((ln for ln in lines if ln["sku"] == H100 + ":1g.10gb"), None)

        found = poll("the 1g.10gb line on the invoice", 30, slice_line)
        assert Decimal(found["unit_price"]) == slice_price
        assert "slice-seconds" in found["description"]
