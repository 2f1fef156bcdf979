"""The host agent: one per host. It learns its host's tasks from scheduling, runs
them through a runtime (``runtimes``), and reports what happens to them.

Two halves:

- **Handlers** (exactly once, through the shared runtime, on the host's own task
  stream ``mc.scheduling.tasks.<host_id>``): a ``StartTask`` records the task and
  starts it (a runtime adopts a task that exists, so a redelivered start never runs a
  workload twice); a ``StopTask`` sends SIGTERM and records when SIGKILL is due.
- **The supervisor** (a loop, every ``poll_s``): for each active task it ships new
  output lines to the workload's capped log, reports the process running and, for an
  inference task, its endpoint once it listens, sends SIGKILL when the grace period
  is over, and reports the exit — once: each report's event id is derived from the
  task, so a report repeated after a crash is absorbed by its consumers, and a log
  batch and its cursor are written in one script, so no line is shipped twice.

A restarted agent finds its tasks in its records and its runtime (process
directories, containers by label): exits that happened while it was down are
reported with their own time, and a task whose allocation was released meanwhile is
stopped by the ``StopTask`` still waiting in its stream.

Beside them: registration at start (``RegisterHost``, with faults found by
discovery), heartbeats every ``heartbeat_s`` (inventory marks a silent host
unreachable) and, on an NVML host, health checks every ``health_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from minicloud_agent.app import subscribe
from minicloud_agent.discovery import Fault, HostGpus, faults_of
from minicloud_agent.runtimes import Line, Observed, Runtime, StartFailed, Task
from minicloud_agent.settings import AgentSettings
from minicloud_shared.clock import Clock, SystemClock
from minicloud_shared.contracts import Message, derived_event_id
from minicloud_shared.contracts.agent import (
    EndpointReady,
    HostHeartbeat,
    RunSpec,
    StartTask,
    StopTask,
    TaskExited,
    TaskRunning,
)
from minicloud_shared.contracts.inventory import RegisterHost, ReportGpuFault
from minicloud_shared.contracts.topology import AGENT, agent_key_prefix, logs_stream
from minicloud_shared.runtime import ServiceRuntime, Transaction, publish
from minicloud_shared.runtime.routing import TRANSIENT_ERRORS
from minicloud_shared.skus import skus

log = structlog.get_logger(service=AGENT)

# One log batch and its cursor, atomically: XADD each line (capped), the cursor, the
# TTL. The log stream is an argument, not a declared key (as in the runtime's commit
# script): Redis checks a script's declared keys against one permission set, and the
# agent's own keys and the logs are in two; the XADD inside is checked on its own.
_SHIP_LUA = """
local stream = ARGV[5]
local n = tonumber(ARGV[1])
local cap = ARGV[2]
local ttl = tonumber(ARGV[3])
local i = 6
for _ = 1, n do
  redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', 't', ARGV[i], 'r', ARGV[i+1], 's', ARGV[i+2], 'l', ARGV[i+3])
  i = i + 4
end
redis.call('HSET', KEYS[1], 'cursor', ARGV[4])
if n > 0 then redis.call('EXPIRE', stream, ttl) end
return n
"""

TaskState = Literal["started", "refused", "stopping", "stopped_before_start"]


class TaskRecord(BaseModel):
    """What the agent knows of one task (a versioned record, written by its handlers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    allocation_id: str
    workload_id: str
    tenant_id: str | None
    rank: int
    state: TaskState
    start_error: str = ""
    kill_at: datetime | None = None
    stop_reason: str = ""
    host_port: int | None = None
    port: int | None = None


def task_key(allocation_id: str, rank: int) -> str:
    return f"{allocation_id}-r{rank}"


def host_resources(s: AgentSettings) -> tuple[int, int]:
    """The CPU (thousandths of a vCPU) and memory (MiB) this host gives to workloads:
    as configured, else all its CPUs and its memory."""
    cpu = s.cpu_milli or (os.cpu_count() or 1) * 1000
    mem = s.memory_mib
    if mem is None:
        mem = 1024
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem = max(1024, int(line.split()[1]) // 1024)
                    break
    return cpu, mem


def limits_env(t: StartTask, gpu_memory_mib: int | None, mig: tuple[str, int] | None = None) -> dict[str, str]:
    """What a task learns of its limits. A share of a GPU is time-sliced: nothing in the
    driver stops it using more, so it is told its share, a memory cap in proportion to
    the GPU's memory, and, under MPS, the thread percentage (``CUDA_MPS_*``: a limit
    MPS applies when its daemon runs). A MIG slice (``mig``: its device and memory) is
    its own device, the GPU itself not visible: CUDA and the container toolkit both take
    a MIG UUID. CPU-only work sees no GPU."""
    env: dict[str, str] = {}
    if mig is not None and t.mig_profile is not None:
        device, memory = mig
        env["CUDA_VISIBLE_DEVICES"] = env["MINICLOUD_MIG_DEVICE"] = device
        env["MINICLOUD_MIG_PROFILE"] = t.mig_profile
        env["MINICLOUD_GPU_MEMORY_MIB"] = str(memory)
    if t.gpu_milli:
        env["MINICLOUD_GPU_MILLI"] = str(t.gpu_milli)
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(max(1, t.gpu_milli // 10))
        if gpu_memory_mib:
            cap = gpu_memory_mib * t.gpu_milli // 1000
            env["MINICLOUD_GPU_MEMORY_MIB"] = str(cap)
            env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={cap}M"
    if not t.gpu_indices:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    if t.cpu_milli is not None:
        env["MINICLOUD_CPU_MILLI"] = str(t.cpu_milli)
    if t.memory_mib is not None:
        env["MINICLOUD_MEMORY_MIB"] = str(t.memory_mib)
    return env


def distributed_env(t: StartTask, gpu_uuids: list[str], listen: int | None) -> dict[str, str]:
    """The environment a gang's node gets, named as torchrun and common launchers
    expect (one process per node: ``RANK`` is the node's rank; a program that starts
    one process per GPU passes ``NODE_RANK``, ``NNODES`` and ``GPUS_PER_NODE`` to its
    launcher)."""
    env = {
        "RANK": str(t.rank),
        "NODE_RANK": str(t.rank),
        "GROUP_RANK": str(t.rank),
        "WORLD_SIZE": str(t.world_size),
        "NNODES": str(t.world_size),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "GPUS_PER_NODE": str(len(t.gpu_indices)),
        "MASTER_ADDR": t.master_addr,
        "MASTER_PORT": str(t.master_port),
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(t.gpu_indices))),
        "NVIDIA_VISIBLE_DEVICES": ",".join(gpu_uuids) if gpu_uuids else "void",
        "MINICLOUD_WORKLOAD_ID": t.workload_id,
        "MINICLOUD_ALLOCATION_ID": t.allocation_id,
        "MINICLOUD_HOST_ID": t.host_id,
    }
    if listen is not None:
        env["PORT"] = str(listen)  # where an inference program listens (its container port, or the host port)
    return env


@dataclass
class Progress:
    cursor: str = ""
    running: bool = False
    endpoint: bool = False
    exited: bool = False


class Agent:
    """One host's agent. ``runtime`` runs the tasks; ``service`` is the exactly-once
    consumer runtime (its handlers are registered by :meth:`register_handlers`)."""

    def __init__(
        self,
        settings: AgentSettings,
        runtime: Runtime,
        gpus: HostGpus,
        service: ServiceRuntime,
        clock: Clock | None = None,
        probe: Callable[[], list[Fault]] | None = None,
    ) -> None:
        self.s = settings
        self.runtime = runtime
        self.gpus = gpus
        self.service = service
        self.clock = clock or service.clock or SystemClock()
        self.probe = probe
        self.prefix = agent_key_prefix(settings.host_id)
        self.active_key = f"{self.prefix}active"
        self._tasks: list[asyncio.Task[None]] = []
        self._reported_faults: set[tuple[int, str]] = set()
        self._stopping = False
        self.resources = host_resources(settings)  # (CPU thousandths, memory MiB) it declares

    # --- keys --------------------------------------------------------------------------

    def record_key(self, key: str) -> str:
        return f"{self.prefix}task:{key}"

    def progress_key(self, key: str) -> str:
        return f"{self.prefix}progress:{key}"

    @property
    def redis(self) -> Redis:
        return self.service.redis

    # --- handlers (exactly once) -------------------------------------------------------

    def register_handlers(self) -> None:
        subscribe(self.service, self.s.host_id, self.on_start, self.on_stop)

    def host_port(self, key: str) -> int:
        return self.s.port_base + zlib.crc32(key.encode()) % self.s.port_span

    def task_of(self, t: StartTask, tenant: str, host_port: int | None) -> Task:
        uuids = [self.gpus.gpus[i].uuid for i in t.gpu_indices if i < len(self.gpus.gpus)]
        spec: RunSpec = t.run
        # A container listens on its own port (published on the host port); a process
        # on the host port itself.
        listen = host_port if self.runtime.name == "process" else spec.port
        env = {**spec.env, **distributed_env(t, uuids if self.gpus.source == "nvml" else [], listen)}
        mig = None
        if t.mig_profile is not None and t.mig_instance is not None and t.gpu_indices:
            gpu = t.gpu_indices[0]
            mig = (self.mig_uuid(gpu, t.mig_instance, t.mig_profile), self.mig_memory_mib(gpu, t.mig_profile))
            uuids = [mig[0]]  # what a Docker host's container is given
            if self.gpus.source == "nvml":
                env["NVIDIA_VISIBLE_DEVICES"] = mig[0]
        env.update(limits_env(t, self.gpu_memory_mib(t.gpu_indices), mig))
        return Task(
            t.allocation_id,
            t.workload_id,
            tenant,
            t.rank,
            spec.image,
            list(spec.command),
            env,
            uuids,
            spec.port,
            host_port,
            t.cpu_milli,
            t.memory_mib,
        )

    def mig_uuid(self, gpu: int, instance: int, profile: str) -> str:
        """The MIG device of slice ``instance`` (of ``profile``) of ``gpu``. On an NVML host
        with MIG on: the k-th device of that profile, where the slice is the k-th of its
        profile in the layout this agent was given (the one the GPU was partitioned with);
        on configured GPUs: derived from the GPU's UUID (stable, never a real device)."""
        gpus = self.gpus.gpus
        found = [u for p, u in gpus[gpu].mig if p == profile] if gpu < len(gpus) else []
        layout = self.s.mig_slices
        k = layout[:instance].count(profile) if instance <= len(layout) else instance
        if k < len(found):
            return found[k]
        base = gpus[gpu].uuid if gpu < len(gpus) else f"{self.s.host_id}/{gpu}"
        return f"MIG-{uuid.uuid5(uuid.NAMESPACE_URL, f'minicloud:{base}:mig:{instance}')}"

    def mig_memory_mib(self, gpu: int, profile: str) -> int:
        """A slice's memory: its memory slots of eight of the GPU's."""
        known = skus().get(self.gpus.gpus[gpu].sku) if gpu < len(self.gpus.gpus) else None
        mig = known.mig_profile(profile) if known is not None else None
        total = self.gpu_memory_mib([gpu]) or 0
        return total * mig.memory_slots // 8 if mig is not None else 0

    def gpu_memory_mib(self, indices: list[int]) -> int | None:
        """The memory of the first of these GPUs: as NVML reports it, else its SKU's."""
        if not indices or indices[0] >= len(self.gpus.gpus):
            return None
        gpu = self.gpus.gpus[indices[0]]
        known = skus().get(gpu.sku)
        return gpu.memory_mib or (known.memory_gb * 1024 if known is not None else None)

    async def on_start(self, msg: Message[StartTask], tx: Transaction) -> None:
        t = msg.payload
        if t.host_id != self.s.host_id:
            return  # not ours (a misrouted task): nothing to run
        key = task_key(t.allocation_id, t.rank)
        if await tx.load(self.record_key(key), TaskRecord) is not None:
            return  # started (or stopped) before
        tenant = msg.envelope.tenant_id or ""
        host_port = self.host_port(key) if t.run.port is not None else None
        record = TaskRecord(
            key=key,
            allocation_id=t.allocation_id,
            workload_id=t.workload_id,
            tenant_id=tenant,
            rank=t.rank,
            state="started",
            host_port=host_port,
            port=t.run.port,
        )
        try:
            await self.runtime.start(self.task_of(t, tenant, host_port))
        except StartFailed as exc:
            record = record.model_copy(update={"state": "refused", "start_error": str(exc)})
        await tx.put(self.record_key(key), record)
        tx.sadd(self.active_key, key)
        log.info(
            "task started" if record.state == "started" else "task could not start",
            allocation_id=t.allocation_id,
            rank=t.rank,
            error=record.start_error or None,
            tenant_id=tenant,
        )

    async def on_stop(self, msg: Message[StopTask], tx: Transaction) -> None:
        t = msg.payload
        if t.host_id != self.s.host_id:
            return
        key = task_key(t.allocation_id, t.rank)
        record = await tx.load(self.record_key(key), TaskRecord)
        if record is None:
            # Stopped before it started here (its start was refused by scheduling's
            # view, or dead-lettered): a StartTask that comes later must not run it.
            tombstone = TaskRecord(
                key=key,
                allocation_id=t.allocation_id,
                workload_id=t.workload_id,
                tenant_id=msg.envelope.tenant_id,
                rank=t.rank,
                state="stopped_before_start",
                stop_reason=t.reason,
            )
            await tx.put(self.record_key(key), tombstone)
            return
        if record.state not in ("started", "stopping"):
            return  # could not start, or already stopped
        kill_at = t.kill_at if record.kill_at is None else min(record.kill_at, t.kill_at)
        update = {"state": "stopping", "kill_at": kill_at, "stop_reason": record.stop_reason or t.reason}
        await tx.put(self.record_key(key), record.model_copy(update=update))
        # SIGTERM now (again, harmlessly, if this message is delivered again); the
        # supervisor sends SIGKILL at kill_at. The same batch's StartTask has started
        # the process already (handlers run in order).
        await self.runtime.signal(key, signal.SIGTERM)
        log.info("task stopping", allocation_id=t.allocation_id, reason=t.reason, kill_at=kill_at.isoformat())

    async def _active(self) -> list[str]:
        return sorted(k.decode() if isinstance(k, bytes) else k for k in await self.redis.smembers(self.active_key))

    # --- the supervisor ----------------------------------------------------------------

    async def _record(self, key: str) -> TaskRecord | None:
        data = await self.redis.hget(self.record_key(key), "d")
        return None if data is None else TaskRecord.model_validate_json(data)

    async def _progress(self, key: str) -> Progress:
        raw = await self.redis.hgetall(self.progress_key(key))
        d = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        return Progress(d.get("cursor", ""), d.get("running") == "1", d.get("endpoint") == "1", d.get("exited") == "1")

    async def _flag(self, key: str, name: str) -> None:
        await self.redis.hset(self.progress_key(key), name, "1")

    async def _ship(self, record: TaskRecord, lines: list[Line], cursor: str) -> None:
        args: list[str] = [
            str(len(lines)),
            str(self.s.log_max_lines),
            str(self.s.log_ttl_s),
            cursor,
            logs_stream(record.workload_id),
        ]
        for ln in lines:
            args += [ln.at.isoformat().replace("+00:00", "Z"), str(record.rank), ln.stream, ln.text]
        await self.redis.eval(_SHIP_LUA, 1, self.progress_key(record.key), *args)

    async def _publish(self, payload: Any, record: TaskRecord, what: str, at: datetime | None = None) -> None:
        await publish(
            self.redis,
            payload,
            producer=AGENT,
            tenant_id=record.tenant_id,
            event_id=derived_event_id(self.s.host_id, record.key, what),
            occurred_at=at or self.clock.now(),
        )

    async def supervise_once(self) -> None:
        """One look at every active task."""
        for key in await self._active():
            record = await self._record(key)
            if record is None:
                await self.redis.srem(self.active_key, key)
                continue
            await self._supervise(record)

    async def _supervise(self, record: TaskRecord) -> None:
        key = record.key
        progress = await self._progress(key)
        now = self.clock.now()
        if record.state == "refused":
            if not progress.exited:
                # The cloud's own line in the workload's log, shipped like the program's.
                why = Line(now, "agent", f"the task could not start: {record.start_error}")
                await self._ship(record, [why], progress.cursor)
                await self._publish(self._exited(record, -1, now, record.start_error), record, "exited")
                await self._flag(key, "exited")
            await self._forget(key)
            return
        obs: Observed | None = await self.runtime.observe(key)
        lines, cursor = await self.runtime.output(key, progress.cursor, self.s.log_lines_per_poll)
        if lines or cursor != progress.cursor:
            await self._ship(record, lines, cursor)
        if obs is None:
            # The runtime has no such task (its files or container removed by hand):
            # the program is gone; report it ended, killed.
            if not progress.exited:
                gone = self._exited(record, 137, now, "the task disappeared from its runtime")
                await self._publish(gone, record, "exited")
                await self._flag(key, "exited")
            await self._forget(key)
            return
        if obs.running and not progress.running:
            running = TaskRunning(
                allocation_id=record.allocation_id,
                workload_id=record.workload_id,
                host_id=self.s.host_id,
                rank=record.rank,
                running_at=now,
            )
            await self._publish(running, record, "running", now)
            await self._flag(key, "running")
        if obs.running and record.host_port is not None and not progress.endpoint and await self._listens(record):
            ready = EndpointReady(
                allocation_id=record.allocation_id,
                workload_id=record.workload_id,
                host_id=self.s.host_id,
                address=self.s.address,
                port=record.host_port,
            )
            await self._publish(ready, record, "endpoint")
            await self._flag(key, "endpoint")
        if obs.running and record.kill_at is not None and now >= record.kill_at:
            log.info("grace period over: SIGKILL", allocation_id=record.allocation_id, rank=record.rank)
            await self.runtime.signal(key, signal.SIGKILL)
            return
        if obs.exit is not None and not obs.running:
            if lines and len(lines) >= self.s.log_lines_per_poll:
                return  # ship the rest of its output before its exit
            if not progress.exited:
                # The runtime's own time of the exit, on the system clock; a simulated
                # clock (tests, the demo's stack) takes the moment the exit was seen.
                at = obs.exit.at if isinstance(self.clock, SystemClock) else now
                # The record as it is now: a StopTask handled since this look began (its
                # SIGTERM is what ended the program) makes the exit a stop.
                record = await self._record(key) or record
                exited = self._exited(record, obs.exit.code, at, obs.exit.detail)
                await self._publish(exited, record, "exited", at)
                await self._flag(key, "exited")
                log.info("task exited", allocation_id=record.allocation_id, rank=record.rank, code=obs.exit.code)
            await self.runtime.remove(key)
            await self._forget(key)

    def _exited(self, record: TaskRecord, code: int, at: datetime, detail: str) -> TaskExited:
        return TaskExited(
            allocation_id=record.allocation_id,
            workload_id=record.workload_id,
            host_id=self.s.host_id,
            rank=record.rank,
            exit_code=code,
            exited_at=at,
            stopped=record.state == "stopping",
            detail=detail[:500],
        )

    async def _forget(self, key: str) -> None:
        # The record stays (a StartTask delivered again finds it and does nothing).
        await self.redis.srem(self.active_key, key)
        await self.redis.delete(self.progress_key(key))

    async def _listens(self, record: TaskRecord) -> bool:
        assert record.host_port is not None
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.s.probe_host, record.host_port), 0.5)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    # --- registration, heartbeats, health -------------------------------------------

    def registration(self) -> RegisterHost:
        return RegisterHost(
            host_id=self.s.host_id,
            region=self.s.region,
            zone=self.s.zone,
            rack=self.s.rack,
            nvlink_domain=self.s.domain,
            sku=self.gpus.sku,
            gpu_count=len(self.gpus.gpus),
            address=self.s.address,
            cpu_milli=self.resources[0],
            memory_mib=self.resources[1],
            gpu_mode=self.s.gpu_mode,
            mig_layout=self.s.mig_slices or None,
        )

    async def register(self) -> None:
        c = self.registration()
        facts = json.dumps(c.model_dump(mode="json"), sort_keys=True)
        await publish(self.redis, c, producer=AGENT, event_id=derived_event_id(self.s.host_id, "register", facts))
        await self.report_faults(faults_of(self.gpus))

    async def report_faults(self, faults: list[Fault]) -> None:
        """Each fault once per agent run (inventory refuses a GPU faulted already)."""
        for index, code, detail in faults:
            if (index, code) in self._reported_faults:
                continue
            fault = ReportGpuFault(host_id=self.s.host_id, gpu_index=index, code=code, detail=detail[:500])
            await publish(
                self.redis, fault, producer=AGENT, event_id=derived_event_id(self.s.host_id, "fault", str(index), code)
            )
            self._reported_faults.add((index, code))
            log.warning("GPU fault reported", gpu_index=index, code=code, detail=detail)

    async def heartbeat(self) -> None:
        now = self.clock.now()
        running = sorted({k.rsplit("-r", 1)[0] for k in await self._active()})
        bucket = str(int(now.timestamp() / self.s.heartbeat_s))
        await publish(
            self.redis,
            HostHeartbeat(host_id=self.s.host_id, at=now, running=running),
            producer=AGENT,
            event_id=derived_event_id(self.s.host_id, "heartbeat", bucket),
            occurred_at=now,
        )

    async def _every(self, seconds: float, work: Callable[[], Any], name: str) -> None:
        # A cancellation that a client library turns into a connection error must still
        # end the loop: it also stops once the agent is stopping.
        while not self._stopping:
            try:
                await work()
            except TRANSIENT_ERRORS as exc:
                log.warning(f"{name}: Redis unreachable; trying again", error=str(exc))
            except Exception:
                log.exception(f"{name} failed; trying again")
            await asyncio.sleep(seconds)

    async def health(self) -> None:
        if self.probe is not None:
            await self.report_faults(await asyncio.to_thread(self.probe))

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        await self.service.start()
        await self.register()
        await self.heartbeat()
        self._tasks = [
            asyncio.create_task(self._every(self.s.poll_s, self.supervise_once, "supervisor"), name="supervisor"),
            asyncio.create_task(self._every(self.s.heartbeat_s, self.heartbeat, "heartbeat"), name="heartbeat"),
        ]
        if self.probe is not None:
            self._tasks.append(asyncio.create_task(self._every(self.s.health_s, self.health, "health"), name="health"))
        log.info(
            "agent running",
            host_id=self.s.host_id,
            gpus=len(self.gpus.gpus),
            sku=self.gpus.sku,
            source=self.gpus.source,
            runtime=self.runtime.name,
        )

    async def stop(self) -> None:
        """Stop the agent (its tasks keep running: a restarted agent adopts them)."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=10)  # bounded, whatever a library does
            for t in stuck:
                log.warning("agent loop did not stop within 10 s", task=t.get_name())
        self._tasks = []
        await self.service.stop()
