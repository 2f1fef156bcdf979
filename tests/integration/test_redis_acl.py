"""S11: each service's Redis user can do its own work and nothing else; R27: the shipped
Redis configuration persists every write, never evicts, and turns the default user off.

The ACL is the one the compose stack loads (generated from the topology by
``minicloud_shared.acl``), applied with ``ACL SETUSER`` to the test Redis; the services
then run on it under their own users, end to end.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from minicloud_agent.__main__ import build as build_agent
from minicloud_agent.settings import AgentSettings
from minicloud_billing.app import build as build_billing
from minicloud_inventory.app import build as build_inventory
from minicloud_metering.app import build as build_metering
from minicloud_scheduling.app import build as build_scheduling
from minicloud_shared.acl import USERS, acl_file, agent_user
from minicloud_shared.contracts.agent import RunSpec
from minicloud_shared.contracts.inventory import RegisterHost
from minicloud_shared.contracts.scheduling import CompleteWorkload, SubmitWorkload
from minicloud_shared.contracts.topology import AGENT, logs_stream, tasks_stream
from minicloud_shared.runtime import ServiceRuntime, provision, publish
from minicloud_shared.runtime.entrypoint import create_runtime
from minicloud_shared.settings import Settings
from tests.support.fleet import host_facts
from tests.support.harness import wait_until

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
AGENT_HOSTS = ("ag1",)
PASSWORDS = {u: f"pw-{u}-test" for u in (*USERS, *(agent_user(h) for h in AGENT_HOSTS))}
BUILDS = {
    "inventory": build_inventory,
    "scheduling": build_scheduling,
    "metering": build_metering,
    "billing": build_billing,
}


def as_user(redis_url: str, user: str) -> str:
    return redis_url.replace("redis://", f"redis://{user}:{PASSWORDS[user]}@", 1)


def service_runtimes(url: str) -> list[ServiceRuntime]:
    """Inventory, scheduling, metering and billing, each under its own Redis user."""
    runtimes = []
    for svc, build in BUILDS.items():
        settings = Settings(
            service=svc,
            redis_url=as_user(url, svc),
            provision_on_start=False,
            block_ms=50,
            reclaim_idle_ms=2000,
            log_level="WARNING",
            log_format="console",
            tick_s=0.2,
        )
        runtimes.append(create_runtime(svc, build, settings))
    return runtimes


@pytest.fixture
async def acl_redis(redis_url: str) -> AsyncIterator[str]:
    admin = Redis.from_url(redis_url)
    for line in acl_file(PASSWORDS, AGENT_HOSTS).splitlines():
        if not line.startswith("user ") or line.startswith("user default "):
            continue
        _, name, rest = line.split(" ", 2)
        await admin.execute_command("ACL", "SETUSER", name, "reset", *re.findall(r"\([^)]*\)|\S+", rest))  # type: ignore[no-untyped-call]
    yield redis_url
    for user in PASSWORDS:
        await admin.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]
    await admin.aclose()


async def denied(redis: Redis, *command: Any) -> bool:
    try:
        await redis.execute_command(*command)  # type: ignore[no-untyped-call]
    except NoPermissionError:
        return True
    except ResponseError as exc:
        return "NOPERM" in str(exc)
    return False


async def test_s11_each_service_can_do_its_own_work_and_nothing_else(acl_redis: str) -> None:
    url = acl_redis
    prov = Redis.from_url(as_user(url, "provisioner"))
    await provision(prov)
    runtimes = service_runtimes(url)
    gateway = Redis.from_url(as_user(url, "gateway"))
    try:
        for r in runtimes:
            await r.start()
        # The work itself, each service under its own user: a host, a job, its invoice.
        host = RegisterHost(
            host_id="h1", region="eu-1", zone="a", rack="r1", nvlink_domain="n1", sku="h100-80gb-sxm", gpu_count=8
        )
        await publish(gateway, host, producer="gateway")
        job = SubmitWorkload(
            workload_id="w1",
            name="w1",
            kind="training",
            sku="h100-80gb-sxm",
            gpus_per_node=8,
            client_command_id="c1",
        )
        await publish(gateway, job, producer="gateway", tenant_id="acme")
        billing = Redis.from_url(as_user(url, "billing"))
        admin = Redis.from_url(url)  # the test looks; the services work under their users
        await wait_until(lambda: _exists(admin, "mc:billing:alloc:*"), 20, "billing to see the allocation")
        await publish(gateway, CompleteWorkload(workload_id="w1"), producer="gateway", tenant_id="acme")
        await wait_until(lambda: _closed(admin), 20, "the allocation charged under ACL users")
        await admin.aclose()
        for r in runtimes:
            assert r.stats["batch_errors"] == 0, f"{r.service} hit errors under its ACL user"
            assert r.health.ready, f"{r.service}: {r.health.reasons}"
        # ... and nothing else.
        inv = Redis.from_url(as_user(url, "inventory"))
        met = Redis.from_url(as_user(url, "metering"))
        assert await denied(inv, "GET", "mc:billing:account:acme")  # another service's state
        assert await denied(inv, "HSET", "mc:scheduling:hosts", "x", "1")
        assert await denied(inv, "XADD", "mc.billing.events", "*", "f", "v")  # another's event stream
        assert await denied(inv, "XADD", "mc.scheduling.events", "*", "f", "v")  # one it only reads
        assert await denied(met, "XADD", "mc.scheduling.events", "*", "f", "v")
        assert await denied(met, "SET", "mc:billing:x", "1")
        assert await denied(met, "SET", "mc:epoch", "forged")  # the epoch is read-only
        assert await denied(gateway, "XADD", "mc.scheduling.events", "*", "f", "v")  # commands only
        assert await denied(gateway, "XADD", "mc.metering.commands", "*", "f", "v")  # metering's internal one
        assert not await denied(gateway, "XLEN", "mc.gateway.events")
        assert not await denied(gateway, "INFO", "memory")  # the storage guard
        assert await denied(prov, "GET", "mc:billing:account:acme")
        assert await denied(prov, "SET", "mc.scheduling.events", "x")  # replacing a stream
        assert await denied(prov, "SET", "mc:billing:x", "1")
        for client, svc in ((inv, "inventory"), (met, "metering"), (billing, "billing")):
            assert await denied(
                client, "FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('f', function() end)"
            )
            assert await denied(client, "RESTORE", f"mc:{svc}:r", "0", "x")  # even on its own keys
            assert await denied(client, "SCAN", "0")
            assert await denied(client, "RANDOMKEY")
            assert await denied(client, "INFO")
        for client in (inv, met, gateway, billing, prov):
            assert await denied(client, "FLUSHALL")
            assert await denied(client, "KEYS", "*")
            assert await denied(client, "CONFIG", "GET", "*")
            assert await denied(client, "ACL", "LIST")
        for client in (inv, met, billing):
            await client.aclose()
    finally:
        for r in runtimes:
            await r.stop()
        await gateway.aclose()
        await prov.aclose()


async def test_a_host_agent_does_its_hosts_work_and_nothing_else(acl_redis: str, tmp_path: Path) -> None:
    """The agent of host ag1 under its own user: registers its host, runs a program and
    ships its output, reports its exit (scheduling, inventory and the gateway's reader
    under theirs); and cannot read another host's tasks, any service's state or logs."""
    url = acl_redis
    prov = Redis.from_url(as_user(url, "provisioner"))
    await provision(prov)
    runtimes = service_runtimes(url)
    agent_settings = Settings(
        service=AGENT,
        redis_url=as_user(url, agent_user("ag1")),
        block_ms=50,
        log_level="WARNING",
        log_format="console",
        trim_interval_s=0.2,
        retention_s=0,
    )
    s = AgentSettings(host_id="ag1", gpus="1 x a10-24gb-pcie", workdir=tmp_path, heartbeat_s=0.3, poll_s=0.1)
    agent = build_agent(s, agent_settings)
    gateway = Redis.from_url(as_user(url, "gateway"))
    admin = Redis.from_url(url)
    try:
        for r in runtimes:
            await r.start()
        await agent.start()  # creates its group on its task stream, registers its host
        run = RunSpec(image="local", command=["python3", "-c", "print('hello from ag1')"])
        job = SubmitWorkload(
            workload_id="w2",
            name="w2",
            kind="training",
            sku="a10-24gb-pcie",
            gpus_per_node=1,
            client_command_id="c2",
            run=run,
        )
        await publish(gateway, job, producer="gateway", tenant_id="acme")
        await wait_until(
            lambda: _has(admin, "mc:scheduling:wl:w2", "completed"), 30, "the program run and its exit reported"
        )
        lines = await gateway.xrange(logs_stream("w2"))  # the gateway reads it for the tenant
        assert [f[b"l"] for _, f in lines] == [b"hello from ag1"]
        await wait_until(lambda: _trimmed(admin, tasks_stream("ag1")), 20, "the agent to trim its task stream")
        for r in runtimes:
            assert r.stats["batch_errors"] == 0, f"{r.service} hit errors under its ACL user"
        assert agent.service.stats["batch_errors"] == 0
        assert agent.service.health.ready, agent.service.health.reasons
        # ... and nothing else.
        ag = agent.service.redis
        assert await denied(ag, "XRANGE", tasks_stream("ag2"), "-", "+")  # another host's tasks
        assert await denied(ag, "XREADGROUP", "GROUP", "agent", "x", "STREAMS", tasks_stream("ag2"), ">")
        assert await denied(ag, "HGET", "mc:scheduling:wl:w2", "d")  # a service's state
        assert await denied(ag, "HSET", "mc:agent:ag2:active", "x", "1")  # another agent's keys
        assert await denied(ag, "XADD", "mc.scheduling.commands", "*", "f", "v")
        assert await denied(ag, "XADD", tasks_stream("ag1"), "*", "f", "v")  # its tasks come from scheduling
        assert await denied(ag, "XRANGE", logs_stream("w2"), "-", "+")  # logs are written, not read
        assert await denied(ag, "XRANGE", "mc.agent.events", "-", "+")
        assert await denied(ag, "SET", "mc:epoch", "forged")
        for command in (("KEYS", "*"), ("SCAN", "0"), ("FLUSHALL",), ("CONFIG", "GET", "*")):
            assert await denied(ag, *command)
    finally:
        await agent.stop()
        for r in runtimes:
            await r.stop()
        for c in (gateway, prov, admin):
            await c.aclose()


async def _has(redis: Redis, key: str, text: str) -> bool:
    doc = await redis.hget(key, "d")
    return doc is not None and text.encode() in doc


async def _trimmed(redis: Redis, stream: str) -> bool:
    return int(await redis.xlen(stream)) == 0


async def _exists(redis: Redis, pattern: str) -> bool:
    async for _ in redis.scan_iter(match=pattern):
        return True
    return False


async def _closed(redis: Redis) -> bool:
    async for key in redis.scan_iter(match="mc:billing:alloc:*"):
        return b'"closed":true' in (await redis.hget(key, "d") or b"")
    return False


def test_r27_the_shipped_redis_configuration_is_safe() -> None:
    conf = {}
    for line in (ROOT / "infra/redis/redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.strip().partition(" ")
            conf[key] = value.strip()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] in ("everysec", "always")
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["maxmemory"].endswith(("mb", "gb"))  # bounded: the gateway's guard works against it
    assert conf["protected-mode"] == "yes"
    assert conf["aclfile"] == "/etc/minicloud/users.acl"
    acl = acl_file(PASSWORDS)
    assert "user default off" in acl
    assert all(f"pw-{u}" not in acl for u in USERS)  # digests only


async def test_the_gateway_serves_the_api_under_its_own_redis_user(acl_redis: str) -> None:
    """The public API's writes under the gateway's ACL user, as in the compose stack: a
    submission (its one script: documents, index and the command), an operator's command,
    the storage guard's INFO. (A script declaring the command stream as a key was refused
    there: every declared key must fit one permission set.)"""
    import httpx

    from minicloud_gateway import history
    from minicloud_gateway.api import create_app
    from minicloud_gateway.app import build as build_gateway
    from minicloud_gateway.identity import bootstrap_operator, new_key

    url = acl_redis
    await provision(Redis.from_url(as_user(url, "provisioner")))
    settings = Settings(
        service="gateway",
        redis_url=as_user(url, "gateway"),
        provision_on_start=False,
        block_ms=50,
        log_level="WARNING",
        log_format="console",
    )
    runtime = create_runtime("gateway", build_gateway, settings)
    await runtime.start()
    gateway = Redis.from_url(as_user(url, "gateway"))
    admin = Redis.from_url(url)
    FLEET = ("total", "allocated", "free", "faulted")
    try:
        operator = new_key()[1]
        await bootstrap_operator(gateway, operator)
        await host_facts(admin, 1)  # inventory's fact of an 8-GPU H100 host h1 in eu-1
        app = create_app(gateway, runtime.health, memory_every_s=0)
        op = {"Authorization": f"Bearer {operator}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:

            async def seen() -> bool:
                return bool((await client.get("/v1/regions")).json()["items"])

            await wait_until(seen, 10, "the host in the gateway's projection")
            assert (await client.post("/v1/tenants", json={"tenant_id": "acme", "name": "A"}, headers=op)).is_success
            key = (await client.post("/v1/tenants/acme/keys", headers=op)).json()["key"]
            job = {"name": "j", "kind": "training", "sku": "h100-80gb-sxm", "gpus_per_node": 1}
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "k1"}
            r = await client.post("/v1/workloads", json=job, headers=headers)
            assert r.status_code == 202, r.text
            assert (await client.get(r.headers["Location"], headers=headers)).status_code == 200
            assert await admin.xlen("mc.scheduling.commands") == 1
            host = {"host_id": "h2", "region": "eu-1", "zone": "a", "rack": "r1", "nvlink_domain": "n1"}
            registered = await client.post(
                "/v1/hosts", json={**host, "sku": "h100-80gb-sxm", "gpu_count": 8}, headers=op
            )
            assert registered.status_code == 202, registered.text
            # The operator's views read every group's dead letters and the capacity samples.
            await admin.xadd("mc.metering.usage.dlq.billing", {"type": "x", "dlq_kind": "poison", "dlq_reason": "r"})
            letters = (await client.get("/v1/dead-letters", headers=op)).json()
            assert letters["total"] == 1
            assert letters["items"]
            assert await history.record(gateway, runtime.clock, 60, {"fleet": dict.fromkeys(FLEET, 0), "items": []})
            assert len((await client.get("/v1/capacity/history", headers=op)).json()["items"]) == 1
            assert (await client.get("/v1/queue", headers=op)).json()["total"] >= 0
            # A console session is stored under the gateway's own keys.
            signed_in = await client.post("/console/session", json={"key": operator})
            assert signed_in.status_code == 200, signed_in.text
            assert (await client.get("/v1/tenants")).status_code == 200
        assert await denied(gateway, "XADD", "mc.metering.usage.dlq.billing", "*", "f", "v")  # it only reads them
        assert runtime.stats["batch_errors"] == 0
    finally:
        await runtime.stop()
        await gateway.aclose()
        await admin.aclose()


async def test_r28_a_restart_with_the_shipped_acl_keeps_what_scripts_wrote(tmp_path: Path) -> None:
    """Redis restarted on its AOF with the shipped ACL file keeps every write, scripts'
    too. A script's effects are logged as MULTI/EXEC, and Redis 7.0 re-checks EXEC's ACL
    on replay as the ``default`` user (redis/redis#14541): with that user stripped of
    every permission, each commit and submission was silently dropped at a restart while
    plain writes and the epoch survived, so no service noticed."""
    from minicloud_gateway.api import SUBMIT_LUA
    from minicloud_shared.testing.redis_server import start_process

    acl = tmp_path / "users.acl"
    acl.write_text(acl_file(PASSWORDS))
    data = tmp_path / "data"
    data.mkdir()
    options = ["--aclfile", str(acl), "--appendonly", "yes", "--appendfsync", "always"]
    server = start_process(appendonly=True, workdir=str(data), extra=options)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    try:
        gateway = Redis.from_url(as_user(server.url, "gateway"))
        submit = gateway.register_script(SUBMIT_LUA)
        created, _ = await submit(
            keys=["mc:gateway:wl:acme:w1", "mc:gateway:wls:acme"],
            args=['{"status": "submitted"}', 1, "w1", "mc.scheduling.commands", "type", "x"],
        )
        assert created == 1
        await gateway.hset("mc:gateway:tenant:acme", "name", "plain")  # a plain write, beside
        await gateway.aclose()
        server.stop()
        server = start_process(port=port, appendonly=True, workdir=str(data), extra=options)
        gateway = Redis.from_url(as_user(server.url, "gateway"))
        assert await gateway.hget("mc:gateway:tenant:acme", "name") == b"plain"
        assert await gateway.hget("mc:gateway:wl:acme:w1", "d") == b'{"status": "submitted"}'
        scheduling = Redis.from_url(as_user(server.url, "scheduling"))  # the stream's owner
        assert await scheduling.xlen("mc.scheduling.commands") == 1
        await scheduling.aclose()
        await gateway.aclose()
    finally:
        server.stop()
