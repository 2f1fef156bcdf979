"""The host agent's wiring: what it consumes (its host's task stream) and produces
(``mc.agent.events``; workload logs). ``subscribe`` is what the agent registers on
its runtime; the AsyncAPI document builds it for a placeholder host, ``host_id``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from minicloud_shared.contracts import Message
from minicloud_shared.contracts.agent import StartTask, StopTask
from minicloud_shared.contracts.topology import AGENT, tasks_stream
from minicloud_shared.runtime import ServiceRuntime, Transaction

__all__ = ["SERVICE", "build", "subscribe"]

SERVICE = AGENT
Handler = Callable[[Message[Any], Transaction], Awaitable[None]]


def subscribe(runtime: ServiceRuntime, host_id: str, on_start: Handler, on_stop: Handler) -> None:
    """The agent of ``host_id`` reads its host's task stream (its only reader: it also
    trims it, below what it acknowledged, when the runtime's trimming is on)."""
    stream = tasks_stream(host_id)
    runtime.add_route(StartTask, on_start, stream=stream)
    runtime.add_route(StopTask, on_stop, stream=stream)
    runtime.own_streams(stream)


async def _documented_only(msg: Message[Any], tx: Transaction) -> None:
    raise RuntimeError("the AsyncAPI document's agent handles nothing")


def build(runtime: ServiceRuntime) -> None:
    """The agent's subscriptions for a placeholder host (the AsyncAPI document)."""
    subscribe(runtime, "host_id", _documented_only, _documented_only)
