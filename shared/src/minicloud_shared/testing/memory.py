"""The cloud's services in one process, on an in-memory Redis or a real one.

``Cloud`` builds the services' runtimes on a Redis client and delivers their streams
to them with ``settle()``: each subscription reads what is new for its group
(``XREADGROUP``) and hands it to the runtime's exactly-once batch step
(``ServiceRuntime.process``), round after round, until nothing is left to deliver.
No FastStream, no background tasks, no sleeps: a scenario — submit, placed,
released, metered, charged — runs in milliseconds and is deterministic.

The substrate is the client: ``memory()`` is fakeredis (Redis in process, the Lua
scripts run by its Lua engine), ``real(url)`` a real Redis. The same scenarios run
on both (``tests/unit/test_substrates.py`` and the integration tier), so a scenario
that passes in memory is known to behave the same on Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from minicloud_shared.clock import Clock, SystemClock
from minicloud_shared.contracts import Payload, decode, text
from minicloud_shared.runtime import Entry, ServiceRuntime, provision, publish
from minicloud_shared.settings import Settings

Build = Callable[[ServiceRuntime], None]


def memory() -> Redis:
    """An in-memory Redis (fakeredis with its Lua engine) behind the redis-py client."""
    from fakeredis import FakeServer
    from fakeredis.aioredis import FakeRedis

    client: Redis = FakeRedis(server=FakeServer(version=(7, 0)))
    return client


def real(url: str) -> Redis:
    return Redis.from_url(url)


@dataclass
class Cloud:
    """Services on one Redis, driven by ``settle()``."""

    redis: Redis
    services: dict[str, Build]
    clock: Clock = field(default_factory=SystemClock)
    settings: dict[str, Any] = field(default_factory=dict)
    runtimes: dict[str, ServiceRuntime] = field(default_factory=dict)

    async def start(self) -> Cloud:
        for name, build in self.services.items():
            settings = Settings(service=name, redis_url="redis://in-process", log_level="WARNING", **self.settings)
            runtime = ServiceRuntime(name, settings, clock=self.clock)
            build(runtime)
            await runtime.connect(self.redis)
            self.runtimes[name] = runtime
        await provision(self.redis, [g for r in self.runtimes.values() for g in r.groups])
        return self

    async def stop(self) -> None:
        await self.redis.aclose()

    async def send(self, payload: Payload, tenant: str | None = None, *, at: datetime | None = None) -> str:
        """Publish a command or an event, as the gateway or a producer would; its event id."""
        _, event_id = await publish(
            self.redis, payload, producer="test", tenant_id=tenant, occurred_at=at or self.clock.now()
        )
        return event_id

    async def settle(self, rounds: int = 100) -> int:
        """Deliver every stream to every subscription until nothing is new; the number
        of entries delivered. Fails if it does not settle within ``rounds``."""
        delivered = 0
        for _ in range(rounds):
            moved = 0
            for runtime in self.runtimes.values():
                for sub in runtime.subscriptions:
                    reply: Any = await self.redis.xreadgroup(
                        sub.group, runtime.consumer_name, {sub.stream: ">"}, count=sub.batch_size
                    )
                    for _, entries in reply or []:
                        batch = [Entry(text(eid), fields, 1) for eid, fields in entries]
                        await runtime.process(sub, batch)
                        moved += len(batch)
            if not moved:
                return delivered
            delivered += moved
        raise AssertionError(f"the cloud did not settle within {rounds} rounds ({delivered} entries delivered)")

    async def events(self, stream: str) -> list[Payload]:
        entries: Any = await self.redis.xrange(stream)
        return [decode(fields).payload for _, fields in entries]

    async def of_type(self, stream: str, kind: type[Payload]) -> Sequence[Any]:
        return [e for e in await self.events(stream) if isinstance(e, kind)]
