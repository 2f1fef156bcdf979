"""``python -m minicloud_agent`` runs a host's agent; ``... discover`` prints the GPUs
it finds (NVML on a GPU host, else the configured ones) and exits."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from pydantic import ValidationError

from minicloud_agent.agent import Agent
from minicloud_agent.discovery import DiscoveryError, HostGpus, from_config, from_nvml, health_probe
from minicloud_agent.runtimes import DockerRuntime, ProcessRuntime, Runtime
from minicloud_agent.settings import AgentSettings
from minicloud_shared.clock import clock_from_spec
from minicloud_shared.contracts.topology import AGENT, agent_key_prefix
from minicloud_shared.logs import configure_logging
from minicloud_shared.runtime import ServiceRuntime
from minicloud_shared.runtime.failpoints import Failpoints
from minicloud_shared.settings import Settings
from minicloud_shared.skus import skus


def discover(s: AgentSettings) -> HostGpus:
    if s.gpus.strip().lower() == "nvml":
        try:
            import pynvml
        except ImportError as exc:
            raise DiscoveryError("the nvidia-ml-py package is not installed: configure the GPUs instead") from exc
        return from_nvml(pynvml)
    return from_config(s.gpus, s.host_id, set(skus()))


def make_runtime(s: AgentSettings) -> Runtime:
    if s.runtime == "docker":
        return DockerRuntime(
            s.host_id,
            gpus=s.docker_gpus,
            network=s.docker_network,
            cpus=s.docker_cpus,
            memory_mib=s.docker_memory_mib,
        )
    return ProcessRuntime(s.workdir / s.host_id)


def build(s: AgentSettings, settings: Settings | None = None) -> Agent:
    settings = settings or Settings(service=AGENT)
    settings = settings.model_copy(update={"service": AGENT})
    log = configure_logging(AGENT, settings.log_format, settings.log_level)
    service = ServiceRuntime(
        AGENT,
        settings,
        clock=clock_from_spec(settings.clock),
        failpoints=Failpoints.from_env(),
        logger=log.bind(host_id=s.host_id),
        keys=agent_key_prefix(s.host_id),
    )
    gpus = discover(s)
    probe: Any = None
    if gpus.source == "nvml":
        import pynvml

        probe = health_probe(pynvml)
    agent = Agent(s, make_runtime(s), gpus, service, probe=probe)
    agent.register_handlers()
    return agent


async def run(agent: Agent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    await stop.wait()
    await agent.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        s = AgentSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        print(f"agent: bad configuration (MINICLOUD_AGENT_*): {problems}", file=sys.stderr)
        return 2
    try:
        if args[:1] == ["discover"]:
            print(discover(s).render())
            return 0
        if args:
            print("usage: python -m minicloud_agent [discover]", file=sys.stderr)
            return 2
        agent = build(s)
    except DiscoveryError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return 2
    asyncio.run(run(agent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
