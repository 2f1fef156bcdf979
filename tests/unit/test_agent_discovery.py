"""The host agent's decisions without Redis or GPUs: discovery through a fake NVML
built from a real H200 host's recording (``tests/fixtures/nvml/h200-1gpu``), the
same path from configuration, health as inventory's fault codes, the distributed
environment a gang's node gets, and what a run may ask for."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from minicloud_agent.agent import Agent, distributed_env
from minicloud_agent.discovery import DiscoveryError, XidWatch, from_config, from_nvml, health_probe, sku_for
from minicloud_agent.settings import AgentSettings
from minicloud_shared.contracts.agent import RunSpec, StartTask

RECORDING = Path(__file__).parents[1] / "fixtures" / "nvml" / "h200-1gpu" / "nvml.json"


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


class NVMLError_Timeout(NVMLError):
    pass


def fake_nvml(recording: dict[str, Any], *, lost: set[int] = frozenset(), ecc: int = 0) -> Any:  # type: ignore[assignment]
    """A module with pynvml's names answering as the recorded host did. Its event set
    answers ``Timeout`` (as the recorded healthy H200 did) unless ``xids`` holds
    (device, Xid) pairs, which it delivers once each after registration."""

    def answer(value: dict[str, Any]) -> Any:
        if "error" in value:
            raise NVMLError_NotSupported(value["error"])
        return value["ok"]

    devices: list[dict[str, Any]] = recording["devices"]

    def handle(i: int) -> dict[str, Any]:
        if i in lost:
            raise NVMLError_GpuIsLost("GPU is lost")
        return devices[i]

    def link(h: dict[str, Any], n: int) -> Any:
        links = h["nvlink"]
        if n >= len(links):
            raise NVMLError_NotSupported("no such link")
        return answer(links[n]["state"])

    assert answer_error(devices[0]["xid_wait"]) == "Timeout"
    registered: list[Any] = []

    def wait(events: Any, timeout_ms: int) -> Any:
        pending = [x for x in module.xids if x[0] in registered]
        if not pending:
            raise NVMLError_Timeout("Timeout")
        module.xids.remove(pending[0])
        return SimpleNamespace(device=pending[0][0], eventData=pending[0][1])

    module = SimpleNamespace(
        xids=[],
        NVMLError_Timeout=NVMLError_Timeout,
        nvmlEventTypeXidCriticalError=8,
        nvmlEventSetCreate=lambda: "events",
        nvmlEventSetFree=lambda events: None,
        nvmlDeviceRegisterEvents=lambda h, kind, events: registered.append(h),
        nvmlEventSetWait_v2=wait,
        NVMLError=NVMLError,
        NVMLError_NotSupported=NVMLError_NotSupported,
        NVMLError_GpuIsLost=NVMLError_GpuIsLost,
        NVML_NVLINK_MAX_LINKS=18,
        NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1,
        NVML_VOLATILE_ECC=0,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: answer(recording["driver"]),
        nvmlDeviceGetCount=lambda: recording["count"] * (1 + len(lost)),
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetName=lambda h: answer(h["name"]),
        nvmlDeviceGetUUID=lambda h: answer(h["uuid"]),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(**answer(h["memory"])),
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(**answer(h["pci"])),
        nvmlDeviceGetNvLinkState=link,
        nvmlDeviceGetNvLinkRemotePciInfo=lambda h, n: None,
        nvmlDeviceGetTotalEccErrors=lambda h, kind, counter: ecc or answer(h["ecc_uncorrected_volatile"]),
        nvmlDeviceGetRemappedRows=lambda h: answer(h["remapped_rows"]),
    )
    return module


def answer_error(value: dict[str, Any]) -> str | None:
    error: str | None = value.get("error")
    return error


@pytest.fixture(scope="module")
def recording() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDING.read_text())
    return data


def test_a_real_h200_is_discovered_as_the_catalogs_sku_with_no_nvlink_peers(recording: dict[str, Any]) -> None:
    found = from_nvml(fake_nvml(recording))
    assert found.source == "nvml"
    assert found.driver == "580.159.04"
    (gpu,) = found.gpus
    assert (gpu.name, gpu.sku, gpu.memory_mib) == ("NVIDIA H200", "h200-141gb-sxm", 143_771)
    assert gpu.uuid == "GPU-987dd503-0322-ca89-0ea3-48d4fab7f0bf"
    assert gpu.nvlink_peers == ()  # NotSupported on a one-GPU host: no peers, not an error
    assert gpu.fault is None
    assert found.sku == "h200-141gb-sxm"
    assert "gpu0: NVIDIA H200 (h200-141gb-sxm), 143771 MiB" in found.render()


def test_faults_become_inventorys_codes(recording: dict[str, Any]) -> None:
    (gpu,) = from_nvml(fake_nvml(recording, ecc=2)).gpus
    assert gpu.fault == "ecc-dbe"
    lost = from_nvml(fake_nvml(recording, lost={1})).gpus
    assert [g.fault for g in lost] == [None, "xid-79"]


def test_configured_gpus_take_the_same_path_with_stable_uuids() -> None:
    a = from_config("8 x h100-80gb-sxm", "h1", {"h100-80gb-sxm"})
    assert (a.source, a.sku, len(a.gpus)) == ("config", "h100-80gb-sxm", 8)
    assert a.gpus == from_config("8x h100-80gb-sxm", "h1").gpus  # the same host: the same UUIDs
    assert a.gpus[0].uuid != from_config("8 x h100-80gb-sxm", "h2").gpus[0].uuid
    for bad, says in (("eight h100s", "must look like"), ("0 x h100-80gb-sxm", "1 to 72"), ("2 x z9", "unknown")):
        with pytest.raises(DiscoveryError, match=says):
            from_config(bad, "h1", {"h100-80gb-sxm"})


def test_names_map_to_skus_by_name_and_memory() -> None:
    assert sku_for("NVIDIA H100 80GB HBM3", 81_559) == "h100-80gb-sxm"
    assert sku_for("NVIDIA A100-SXM4-80GB", 81_920) == "a100-80gb-sxm"
    assert sku_for("NVIDIA A100-SXM4-40GB", 40_960) is None  # not sold: said, not guessed
    assert sku_for("NVIDIA H100 PCIe", 81_559) is None


def test_a_gangs_node_gets_the_environment_launchers_expect() -> None:
    run = RunSpec(image="img", command=["python", "train.py"], env={"EPOCHS": "3"})
    task = StartTask(
        allocation_id="alloc-1",
        workload_id="wl-1",
        host_id="h2",
        rank=1,
        world_size=2,
        gpu_indices=[4, 5, 6, 7],
        master_addr="10.0.0.11",
        master_port=29_511,
        run=run,
        started_at=datetime(2026, 11, 30, tzinfo=UTC),
    )
    env = distributed_env(task, ["GPU-a", "GPU-b", "GPU-c", "GPU-d"], None)
    assert {k: env[k] for k in ("RANK", "NODE_RANK", "WORLD_SIZE", "NNODES", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "1",
        "NODE_RANK": "1",
        "WORLD_SIZE": "2",
        "NNODES": "2",
        "MASTER_ADDR": "10.0.0.11",
        "MASTER_PORT": "29511",
    }
    # Inside its container the GPUs it holds are 0..3; the runtime selects them by UUID.
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-a,GPU-b,GPU-c,GPU-d"
    assert env["GPUS_PER_NODE"] == "4"
    assert "PORT" not in env


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"command": []}, "at least 1"),
        ({"command": [""]}, "first word"),
        ({"env": {"RANK": "0"}}, "set by the cloud"),
        ({"env": {"1X": "a"}}, "not an environment variable name"),
        ({"env": {"A": "x\x00"}}, "NUL"),
        ({"port": 0}, "1-65535"),
        ({"image": "bad image"}, "pattern"),
    ],
)
def test_a_run_that_cannot_be_run_as_asked_is_refused(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        RunSpec.model_validate({"image": "img", "command": ["x"], **fields})


def test_xid_events_after_registration_become_faults_once(recording: dict[str, Any]) -> None:
    nvml = fake_nvml(recording)
    probe = health_probe(nvml)
    assert probe() == []  # healthy: the wait times out, as on the real host
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.xids.append((device, 79))
    assert probe() == [(0, "xid-79", "Xid 79 reported by the driver")]
    assert probe() == []  # delivered once
    watch = XidWatch(nvml)
    nvml.xids.append((device, 48))
    assert watch.poll() == [(0, "xid-48", "Xid 48 reported by the driver")]
    watch.close()


def test_a_mig_enabled_gpu_lists_its_slices_by_profile_and_a_task_gets_its_own(recording: dict[str, Any]) -> None:
    """MIG on (the recorded H200 with two instances added, as NVML lists them: slices
    and memory in MB): each becomes (profile, MIG UUID) by the SKU's profiles; a task on
    slice i of a layout gets the device of that profile at the same ordinal."""
    nvml = fake_nvml(recording)
    slices = [
        SimpleNamespace(uuid="MIG-aaaa", attrs=SimpleNamespace(gpuInstanceSliceCount=3, memorySizeMB=71_424)),
        SimpleNamespace(uuid="MIG-bbbb", attrs=SimpleNamespace(gpuInstanceSliceCount=1, memorySizeMB=16_128)),
        SimpleNamespace(uuid="MIG-cccc", attrs=SimpleNamespace(gpuInstanceSliceCount=1, memorySizeMB=16_128)),
    ]

    def mig_handle(h: Any, i: int) -> Any:
        if i >= len(slices):
            raise NVMLError("Not Found")
        return slices[i]

    nvml.nvmlDeviceGetMigMode = lambda h: (1, 1)
    nvml.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7
    nvml.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    nvml.nvmlDeviceGetAttributes = lambda d: d.attrs
    real_uuid = nvml.nvmlDeviceGetUUID
    nvml.nvmlDeviceGetUUID = lambda h: h.uuid if isinstance(h, SimpleNamespace) else real_uuid(h)
    found = from_nvml(nvml)
    assert found.gpus[0].sku == "h200-141gb-sxm"
    assert found.gpus[0].mig == (("3g.71gb", "MIG-aaaa"), ("1g.18gb", "MIG-bbbb"), ("1g.18gb", "MIG-cccc"))
    agent = SimpleNamespace(gpus=found, s=AgentSettings(host_id="h", mig_layout="3g.71gb,1g.18gb,1g.18gb"))
    assert [Agent.mig_uuid(agent, 0, i, p) for i, p in enumerate(("3g.71gb", "1g.18gb", "1g.18gb"))] == [
        "MIG-aaaa",
        "MIG-bbbb",
        "MIG-cccc",
    ]
    # MIG off: no slices listed.
    nvml.nvmlDeviceGetMigMode = lambda h: (0, 0)
    assert from_nvml(nvml).gpus[0].mig == ()
