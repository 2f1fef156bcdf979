"""The host agent's contracts: what a workload runs, the tasks scheduling gives a
host's agent, and the facts the agents report.

A workload that says what to run (``RunSpec``) is run by the agents of the hosts it
is placed on: scheduling writes one ``StartTask`` per node to each host's own task
stream (``mc.scheduling.tasks.<host_id>``, read by that host's agent alone) and a
``StopTask`` when the allocation ends or is given notice. The agents report on
``mc.agent.events``: heartbeats (inventory), a task's process running and its exit
(scheduling ends the workload by itself), an inference endpoint listening (gateway).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from minicloud_shared.contracts.envelope import Payload, register
from minicloud_shared.contracts.topology import AGENT_EVENTS, SCHEDULING_TASKS

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Names the agent sets for the distributed-training environment: a workload cannot
# override them (its rank must be the one scheduling gave it).
RESERVED_ENV = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "NODE_RANK",
        "GROUP_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "MINICLOUD_WORKLOAD_ID",
        "MINICLOUD_ALLOCATION_ID",
        "MINICLOUD_HOST_ID",
        "PORT",
        "NNODES",
        "GPUS_PER_NODE",
    }
)
MAX_ARGS = 256
MAX_ARG_CHARS = 4096
MAX_ENV = 128
MAX_ENV_VALUE_CHARS = 4096


class RunSpec(BaseModel):
    """What a workload runs on each node: an image and a command (argv), with plain
    environment values (no secrets feature yet: do not put credentials here) and, for
    an inference service, the port its process listens on."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    image: str = Field(
        description="Container image (any image the hosts can pull)",
        examples=["minicloud/workload:bookworm"],
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-/:@]*$",
    )
    command: list[str] = Field(
        description="The command and its arguments (argv; no shell)",
        examples=[["python3", "train.py", "--lr", "3e-4"]],
        min_length=1,
        max_length=MAX_ARGS,
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables (plain values)", examples=[{"EPOCHS": "3"}]
    )
    port: int | None = Field(
        None, description="The port an inference service listens on (inside its container)", examples=[8000]
    )

    @field_validator("command")
    @classmethod
    def _argv(cls, argv: list[str]) -> list[str]:
        if not argv[0]:
            raise ValueError("the command's first word (the program) is empty")
        for arg in argv:
            if len(arg) > MAX_ARG_CHARS or "\x00" in arg:
                raise ValueError(f"an argument is longer than {MAX_ARG_CHARS} characters or holds a NUL")
        return argv

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        import re

        if len(env) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} environment variables")
        for name, value in env.items():
            if not re.match(ENV_NAME, name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits, _)")
            if name in RESERVED_ENV:
                raise ValueError(f"{name} is set by the cloud (rank, GPUs, endpoint) and cannot be given")
            if len(value) > MAX_ENV_VALUE_CHARS or "\x00" in value:
                raise ValueError(f"the value of {name} is longer than {MAX_ENV_VALUE_CHARS} characters or holds a NUL")
        return env

    @field_validator("port")
    @classmethod
    def _port(cls, port: int | None) -> int | None:
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("port must be 1-65535")
        return port


# --- scheduling → one host's agent ---------------------------------------------------


class _Task(Payload):
    # The stream is per host (``tasks_stream(host_id)``); this is its family's prefix.
    stream: ClassVar[str] = SCHEDULING_TASKS


@register
class StartTask(_Task):
    """Run one node (rank) of an allocation on this host. The tenant is the envelope's."""

    event_type: ClassVar[str] = "minicloud.scheduling.start_task"

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    host_id: str = Field(description="The host that runs it", examples=["eu1-a-r01-h01"])
    rank: int = Field(description="This node's rank in the gang (0 is the master)", examples=[0], ge=0)
    world_size: int = Field(description="Nodes in the gang", examples=[2], ge=1)
    gpu_indices: list[int] = Field(description="The GPUs of this host it holds", examples=[[0, 1, 2, 3]])
    master_addr: str = Field(description="Address of rank 0's host", examples=["10.0.0.11"])
    master_port: int = Field(description="Port for the gang's rendezvous on rank 0's host", examples=[29500])
    run: RunSpec = Field(
        description="What to run",
        examples=[{"image": "minicloud/workload:bookworm", "command": ["python3", "train.py"]}],
    )
    started_at: AwareDatetime = Field(description="When the allocation started", examples=["2026-11-25T10:00:00Z"])
    gpu_milli: int | None = Field(
        None, description="A share: the thousandths of its one GPU it may use (time-sliced)", examples=[250]
    )
    cpu_milli: int | None = Field(None, description="Its CPU limit, thousandths of a vCPU", examples=[16_000])
    memory_mib: int | None = Field(None, description="Its memory limit, MiB", examples=[131_072])
    mig_profile: str | None = Field(None, description="A MIG slice: its profile", examples=["1g.10gb"])
    mig_instance: int | None = Field(
        None, description="A MIG slice: its index in its GPU's layout (the GPU is gpu_indices[0])", examples=[2], ge=0
    )


@register
class StopTask(_Task):
    """Stop an allocation's process on this host: SIGTERM now, SIGKILL at ``kill_at``."""

    event_type: ClassVar[str] = "minicloud.scheduling.stop_task"

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    host_id: str = Field(description="The host that runs it", examples=["eu1-a-r01-h01"])
    rank: int = Field(description="The node (rank) to stop", examples=[0], ge=0)
    reason: str = Field(description="Why (a release reason, or spot_notice)", examples=["cancelled"])
    kill_at: AwareDatetime = Field(
        description="SIGKILL if still running then (the grace period or the spot notice ends)",
        examples=["2026-11-25T12:00:10Z"],
    )


# --- the agents' facts ---------------------------------------------------------------


class _AgentEvent(Payload):
    stream: ClassVar[str] = AGENT_EVENTS


@register
class HostHeartbeat(_AgentEvent):
    """A host's agent is alive. Inventory marks a host unreachable after a silence."""

    event_type: ClassVar[str] = "minicloud.agent.host_heartbeat"

    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    at: AwareDatetime = Field(description="When (the agent's clock)", examples=["2026-11-25T10:00:00Z"])
    running: list[str] = Field(description="Allocation ids whose processes run here", examples=[["alloc-7f3a"]])


@register
class TaskRunning(_AgentEvent):
    """An allocation's process runs on a host (the tenant is the envelope's)."""

    event_type: ClassVar[str] = "minicloud.agent.task_running"

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    rank: int = Field(description="Rank", examples=[0])
    running_at: AwareDatetime = Field(description="When the process started", examples=["2026-11-25T10:00:01Z"])


@register
class TaskExited(_AgentEvent):
    """An allocation's process on a host ended by itself (or could not start)."""

    event_type: ClassVar[str] = "minicloud.agent.task_exited"

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    rank: int = Field(description="Rank", examples=[1])
    exit_code: int = Field(description="Exit code (128 + n for signal n; -1: it could not start)", examples=[0])
    exited_at: AwareDatetime = Field(description="When it ended", examples=["2026-11-25T11:00:00Z"])
    stopped: bool = Field(
        description="True when the agent stopped it (a StopTask), not the program itself", examples=[False]
    )
    detail: str = Field("", description="What the agent saw", examples=["image minicloud/nope not found"])


@register
class EndpointReady(_AgentEvent):
    """An inference workload's process listens: this is where to reach it."""

    event_type: ClassVar[str] = "minicloud.agent.endpoint_ready"

    allocation_id: str = Field(description="Allocation id", examples=["alloc-7f3a"])
    workload_id: str = Field(description="Workload id", examples=["wl-42"])
    host_id: str = Field(description="Host id", examples=["eu1-a-r01-h01"])
    address: str = Field(description="Host address", examples=["10.0.0.11"])
    port: int = Field(description="Host port", examples=[31001])


LogStream = Literal["stdout", "stderr", "agent"]
