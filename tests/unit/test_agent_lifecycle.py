"""What the cloud does with its agents' reports, in memory (no Redis server, no
processes): the tasks scheduling gives each host, a gang completed by its exits (the
meter stops at the last one), a non-zero exit failing the gang, reports that must
change nothing, and a silent host's work released at its last heartbeat."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from structlog.testing import capture_logs

from minicloud_shared.clock import ManualClock
from minicloud_shared.contracts.agent import HostHeartbeat, RunSpec, StartTask, StopTask, TaskExited
from minicloud_shared.contracts.inventory import HostReachable, HostUnreachable, InventoryTick
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased, WorkloadEnded, WorkloadQueued
from minicloud_shared.contracts.topology import INVENTORY_EVENTS, METERING_USAGE, SCHEDULING_EVENTS, tasks_stream
from minicloud_shared.testing.memory import Cloud, memory
from tests.support.fleet import host, submit
from tests.support.scenarios import SERVICES, T0

RUN = RunSpec(image="img", command=["python3", "train.py"])


async def started(cloud: Cloud, wid: str, nodes: int = 2) -> AllocationPlaced:
    await cloud.send(submit(wid, 8, nodes=nodes, run=RUN), "acme", at=T0)
    await cloud.settle()
    placed: list[AllocationPlaced] = [
        p for p in await cloud.of_type(SCHEDULING_EVENTS, AllocationPlaced) if p.workload_id == wid
    ]
    assert len(placed) == 1
    return placed[0]


def exited(p: AllocationPlaced, rank: int, code: int, after_s: int, **kw: Any) -> TaskExited:
    fields: dict[str, Any] = {
        "allocation_id": p.allocation_id,
        "workload_id": p.workload_id,
        "host_id": p.gpus[rank].host_id,
        "rank": rank,
        "exit_code": code,
        "exited_at": T0 + timedelta(seconds=after_s),
        "stopped": False,
        **kw,
    }
    return TaskExited(**fields)


async def report(cloud: Cloud, e: TaskExited, tenant: str = "acme") -> None:
    """An agent's report, sent a second after the exit it reports."""
    await cloud.send(e, tenant, at=e.exited_at + timedelta(seconds=1))


async def tasks(cloud: Cloud, host_id: str) -> list[Any]:
    return list(await cloud.events(tasks_stream(host_id)))


async def ended(cloud: Cloud, wid: str) -> list[WorkloadEnded]:
    return [e for e in await cloud.of_type(SCHEDULING_EVENTS, WorkloadEnded) if e.workload_id == wid]


async def test_a_gang_is_completed_by_its_exits_and_metered_to_the_last() -> None:
    cloud = await Cloud(memory(), SERVICES).start()
    try:
        with capture_logs():
            for i in (1, 2):
                await cloud.send(host(i, domain=0), at=T0 - timedelta(minutes=5))
            await cloud.settle()
            p = await started(cloud, "g1")
            starts = {s.host_id: s for h in ("h1", "h2") for s in await tasks(cloud, h) if isinstance(s, StartTask)}
            assert sorted((s.rank, s.world_size, s.host_id) for s in starts.values()) == [
                (0, 2, p.gpus[0].host_id),
                (1, 2, p.gpus[1].host_id),
            ]
            assert {s.master_addr for s in starts.values()} == {p.gpus[0].host_id}  # rank 0's host (no address)
            assert all(s.run == RUN for s in starts.values())
            await report(cloud, exited(p, 0, 0, 100), "acme")
            # Reports that must change nothing: another tenant's, a host that does not
            # hold the rank, a task the cloud stopped, and the same report again.
            await report(cloud, exited(p, 1, 3, 101), "mallory")
            await report(cloud, exited(p, 1, 3, 101, host_id=p.gpus[0].host_id), "acme")
            await report(cloud, exited(p, 1, 143, 101, stopped=True), "acme")
            await cloud.settle()
            assert await ended(cloud, "g1") == []
            await report(cloud, exited(p, 1, 0, 120), "acme")
            await cloud.settle()
            (end,) = await ended(cloud, "g1")
            assert (end.outcome, end.exit_code, end.ended_at) == ("completed", 0, T0 + timedelta(seconds=120))
            usage = await cloud.of_type(METERING_USAGE, UsageRecorded)
            assert sum(u.gpu_seconds for u in usage if u.workload_id == "g1") == 16 * 120
            stops = [s for h in ("h1", "h2") for s in await tasks(cloud, h) if isinstance(s, StopTask)]
            assert sorted(s.rank for s in stops) == [0, 1]  # harmless for processes that ended
    finally:
        await cloud.stop()


async def test_a_non_zero_exit_fails_the_gang_with_its_code_and_node() -> None:
    cloud = await Cloud(memory(), SERVICES).start()
    try:
        with capture_logs():
            for i in (1, 2):
                await cloud.send(host(i, domain=0), at=T0 - timedelta(minutes=5))
            await cloud.settle()
            p = await started(cloud, "g2")
            await report(cloud, exited(p, 1, 3, 30, detail="CUDA error"), "acme")
            await cloud.settle()
            (end,) = await ended(cloud, "g2")
            rank1 = p.gpus[1].host_id
            assert (end.outcome, end.exit_code, end.host_id) == ("failed", 3, rank1)
            assert end.reason == f"node 1 on host {rank1} exited with code 3: CUDA error"
            (released,) = await cloud.of_type(SCHEDULING_EVENTS, AllocationReleased)
            assert (released.reason, released.released_at) == ("failed", T0 + timedelta(seconds=30))
            rank0_stops = [s for s in await tasks(cloud, p.gpus[0].host_id) if isinstance(s, StopTask)]
            assert [(s.rank, s.reason) for s in rank0_stops] == [(0, "failed")]
    finally:
        await cloud.stop()


async def test_a_silent_hosts_work_is_released_at_its_last_heartbeat_and_requeued() -> None:
    clock = ManualClock(T0 + timedelta(minutes=2))  # the services' now: after the silence below
    cloud = await Cloud(memory(), SERVICES, clock=clock).start()
    try:
        with capture_logs():
            await cloud.send(host(1), at=T0 - timedelta(minutes=5))
            await cloud.settle()
            await cloud.send(HostHeartbeat(host_id="h1", at=T0 - timedelta(seconds=1), running=[]))
            p = await started(cloud, "w1", nodes=1)
            last = T0 + timedelta(seconds=40)
            await cloud.send(HostHeartbeat(host_id="h1", at=last, running=[p.allocation_id]))
            await cloud.settle()
            await cloud.send(InventoryTick(at=last + timedelta(seconds=29)), at=last + timedelta(seconds=29))
            await cloud.settle()
            assert await cloud.of_type(INVENTORY_EVENTS, HostUnreachable) == []  # within the silence
            await cloud.send(InventoryTick(at=last + timedelta(seconds=31)), at=last + timedelta(seconds=31))
            await cloud.settle()
            (lost,) = await cloud.of_type(INVENTORY_EVENTS, HostUnreachable)
            assert lost.last_seen_at == last
            (released,) = await cloud.of_type(SCHEDULING_EVENTS, AllocationReleased)
            assert (released.reason, released.released_at) == ("host_lost", last)
            queued = [q.code for q in await cloud.of_type(SCHEDULING_EVENTS, WorkloadQueued)]
            assert "host_lost" in queued
            usage = await cloud.of_type(METERING_USAGE, UsageRecorded)
            assert sum(u.gpu_seconds for u in usage) == 8 * 40  # nothing after the last heartbeat
            # Heard again while still running the released work: not back yet.
            back = last + timedelta(seconds=60)
            await cloud.send(HostHeartbeat(host_id="h1", at=back, running=[p.allocation_id]))
            await cloud.settle()
            assert await cloud.of_type(INVENTORY_EVENTS, HostReachable) == []
            # Its agent stopped it (the StopTask waiting in its stream): back.
            stop = [t for t in await tasks(cloud, "h1") if isinstance(t, StopTask)]
            assert [(t.allocation_id, t.reason) for t in stop] == [(p.allocation_id, "host_lost")]
            await cloud.send(HostHeartbeat(host_id="h1", at=back + timedelta(seconds=5), running=[]))
            await cloud.settle()
            assert len(await cloud.of_type(INVENTORY_EVENTS, HostReachable)) == 1
    finally:
        await cloud.stop()
