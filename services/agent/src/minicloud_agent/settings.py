"""The agent's settings (environment, prefix ``MINICLOUD_AGENT_``), beside the
runtime's own (``MINICLOUD_REDIS_URL`` and the rest)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_ID = r"^[a-z0-9][a-z0-9\-_.]{0,62}$"


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MINICLOUD_AGENT_", extra="ignore", frozen=True)

    host_id: str = Field(description="This host's id in the fleet", pattern=_ID)
    region: str = Field("local-1", pattern=_ID)
    zone: str = Field("local-1a", pattern=_ID)
    rack: str = Field("local-1a-r01", pattern=_ID)
    nvlink_domain: str = Field("", description="NVLink domain; the host id when empty")
    address: str = Field("127.0.0.1", description="Where this host's workloads are reached (rendezvous, endpoints)")
    gpus: str = Field("nvml", description="'nvml' (discover with NVML) or a configuration such as '8 x h100-80gb-sxm'")
    runtime: Literal["process", "docker"] = Field("process")
    workdir: Path = Field(Path(".run/agent"), description="Process runtime: where task directories live")
    docker_gpus: bool = Field(False, description="Docker runtime: request GPUs by UUID (a real GPU host)")
    docker_network: str = Field("minicloud-workloads")
    docker_cpus: float | None = Field(
        None, gt=0, description="Docker runtime: CPUs per container when a task names none (older tasks)"
    )
    docker_memory_mib: int | None = Field(
        None, gt=0, description="Docker runtime: memory per container, MiB, when a task names none (older tasks)"
    )
    cpu_milli: int | None = Field(
        None, ge=1000, description="CPU this host gives to workloads, thousandths of a vCPU; unset: all its CPUs"
    )
    memory_mib: int | None = Field(
        None, ge=1024, description="Memory this host gives to workloads, MiB; unset: its memory (/proc/meminfo)"
    )
    gpu_mode: Literal["whole", "shared", "mig"] = Field(
        "whole",
        description="How its GPUs are given when it first registers: whole, also as time-sliced shares, or as "
        "the MIG slices of mig_layout (an operator changes it later with POST /v1/hosts/{id}/gpu-mode)",
    )
    mig_layout: str = Field(
        "", description="With gpu_mode mig: the slices every GPU is partitioned into, e.g. '3g.40gb,4g.40gb'"
    )

    @property
    def mig_slices(self) -> list[str]:
        """``mig_layout`` as a list of profiles (empty: none)."""
        return [p.strip() for p in self.mig_layout.split(",") if p.strip()]

    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between heartbeats")
    poll_s: float = Field(0.25, gt=0, description="Seconds between looks at the tasks (exits, output)")
    health_s: float = Field(30.0, gt=0, description="Seconds between NVML health checks")
    log_max_lines: int = Field(
        5_000,
        ge=100,
        description="A workload's log keeps about its last this many lines (all ranks; 2 KiB each at most)",
    )
    log_lines_per_poll: int = Field(2_000, ge=10, description="Lines shipped per task per look; more wait")
    log_ttl_s: int = Field(7 * 86_400, ge=60, description="A workload's log is deleted this long after its last line")
    probe_host: str = Field("127.0.0.1", description="Where the agent checks that an endpoint listens")
    port_base: int = Field(31_000, ge=1024, le=60_000, description="Endpoints get host ports from here")
    port_span: int = Field(2_000, ge=1, le=5_000)

    @property
    def domain(self) -> str:
        return self.nvlink_domain or self.host_id
