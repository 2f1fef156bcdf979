"""The consumer runtime: exactly-once effects on Redis Streams' at-least-once delivery.

Every service builds one :class:`ServiceRuntime`, registers a handler per payload type
it consumes, and runs it. The runtime is a small facade over its parts:

- ``routing`` — subscriptions (one consumer group on one stream) and routes by type;
- ``adapter`` — FastStream: a worker (``XREADGROUP`` in bounded batches) and a
  reclaimer (``XAUTOCLAIM`` of entries idle past ``reclaim_idle_ms``) per subscription;
- ``pipeline`` — the processor that commits a subscription's batches in order, the
  next batch's handlers overlapping the previous commit;
- ``batch`` — one batch: decode (``decoding``), drop what was already applied (dedup
  on the source ``event_id``), run the handlers against a
  :class:`~minicloud_shared.runtime.transaction.Transaction`, and commit — state
  writes with version checks, emitted events, dedup marks, dead letters and XACKs —
  in one Lua script from a typed ``plan.CommitPlan``;
- ``loops`` — ticks and trimming; ``publishing`` — messages from outside a handler.

FastStream never acknowledges anything itself: the only XACK is the one inside the
commit, so an entry is acknowledged exactly when its effect is applied.

What happens to an entry:

- undecodable or invalid → dead-lettered at once (``kind=poison``), never retried;
- an event type this subscription does not handle → acknowledged, nothing else;
- its ``event_id`` already applied → acknowledged only (a duplicate);
- its handler raises :class:`Refused` → dead-lettered at once with the handler's
  reason (``kind=refused``): a message that must never take effect;
- its handler raises anything else → stays pending; the reclaimer redelivers it after
  the idle time; once it has failed on ``max_deliveries`` deliveries it is
  dead-lettered (``kind=failed``);
- Redis unreachable (connection errors, timeouts) → retried with backoff, never
  dead-lettered;
- a concurrent change to an aggregate it read → the batch is re-run on fresh state.

A running service that finds its groups or the deployment epoch gone (Redis restarted
empty) stops consuming and reports not-ready for good; it never recreates a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from typing import Any

import structlog
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from minicloud_shared.clock import Clock, SystemClock
from minicloud_shared.contracts.envelope import text
from minicloud_shared.contracts.topology import EPOCH_KEY, key_prefix
from minicloud_shared.runtime.adapter import build_broker
from minicloud_shared.runtime.batch import Committer
from minicloud_shared.runtime.failpoints import Failpoints
from minicloud_shared.runtime.health import Health, HealthServer
from minicloud_shared.runtime.loops import log_trim_loop, tick_loop, trim_loop
from minicloud_shared.runtime.pipeline import Pipeline
from minicloud_shared.runtime.provision import missing_groups, provision
from minicloud_shared.runtime.routing import (
    TRANSIENT_ERRORS,
    BatchOutcome,
    Declarations,
    Entry,
    Subscription,
)
from minicloud_shared.settings import Settings

_COMMIT_LUA = resources.files("minicloud_shared.runtime").joinpath("commit.lua").read_text()


class ServiceRuntime(Declarations):
    """A service's consumer runtime. See the module docstring."""

    def __init__(
        self,
        service: str,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        failpoints: Failpoints | None = None,
        logger: structlog.stdlib.BoundLogger | None = None,
        keys: str | None = None,
    ) -> None:
        """``keys``: the prefix of the keys it owns, when not ``mc:<service>:`` (a host
        agent's are ``mc:agent:<host_id>:``)."""
        super().__init__(service, settings or Settings(service=service))
        self.clock: Clock = clock or SystemClock()
        self.failpoints = failpoints or Failpoints()
        self.log: structlog.stdlib.BoundLogger = logger or structlog.get_logger(service=service)
        self.consumer_name = self.settings.resolved_consumer_name()
        self.key_prefix = keys or key_prefix(service)
        self.health = Health()
        self.stats: Counter[str] = Counter()
        self.committer = Committer(
            service,
            self.key_prefix,
            self.settings,
            self.clock,
            self.failpoints,
            self.log,
            self.stats,
            self.consumer_name,
        )
        self._broker: RedisBroker | None = None
        self._epoch: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._health_server: HealthServer | None = None
        self._started = False
        self.metrics = self.committer.metrics

    # --- processing (the parts) ------------------------------------------------------

    def build(self) -> RedisBroker:
        """Create the broker and its subscribers (also used to generate AsyncAPI docs)."""
        if self._broker is None:
            self.sealed = True
            self._broker = build_broker(
                self.service,
                self.settings,
                self.consumer_name,
                self.subscriptions,
                self.log,
                self.process,
                self._delivery_count,
                self._reclaimed,
            )
        return self._broker

    def _reclaimed(self, sub: Subscription) -> None:
        self.stats["reclaimed"] += 1
        self.metrics.reclaims.labels(sub.stream, sub.group).inc()

    async def metrics_text(self) -> bytes:
        """``GET /metrics``: the runtime's metrics, with Redis' figures read now."""
        subs = list(self._subs.values())
        self.metrics.declare(subs)
        self.metrics.ready.set(1 if self.health.ready else 0)
        if self.committer.redis is not None:
            await self.metrics.refresh(self.committer.redis, subs)
        return self.metrics.render()

    async def process(self, sub: Subscription, entries: Sequence[Entry]) -> BatchOutcome:
        """Apply a batch exactly once; retry while Redis is unreachable."""
        return await self.committer.process(sub, entries)

    def dedup_key(self, event_id: str) -> str:
        return self.committer.dedup_key(event_id)

    async def _delivery_count(self, sub: Subscription, entry_id: str) -> int | None:
        rows = await self.redis.xpending_range(sub.stream, sub.group, min=entry_id, max=entry_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else None

    @property
    def redis(self) -> Redis:
        if self.committer.redis is None:
            raise RuntimeError("runtime not started")
        return self.committer.redis

    # --- lifecycle -------------------------------------------------------------------

    async def connect(self, client: Redis | None = None) -> None:
        """Open the Redis client and load the commit script (``start`` does it too).

        Enough to call :meth:`process` directly, without subscribers: benchmarks, the
        stateful test and the in-memory substrate (``testing.memory``, which passes its
        own ``client``) drive the commit path this way.
        """
        if self.committer.redis is None:
            # No command of this client blocks, so a reply that takes 10 s is lost: the
            # timeout turns a stuck call into a transient error, retried, instead of a hang.
            redis = client or Redis.from_url(self.settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
            self.committer.redis, self.committer.script = redis, redis.register_script(_COMMIT_LUA)

    async def start(self) -> None:
        """Provision, check, start consuming and the background loops."""
        broker = self.build()
        await self.connect()
        redis, groups = self.redis, self.groups
        if self.settings.provision_on_start:
            report = await provision(redis, groups)
            if report.created:
                self.log.info("provisioned groups at id 0", created=[f"{g.stream}:{g.group}" for g in report.created])
        missing = await missing_groups(redis, groups)
        epoch = await redis.get(EPOCH_KEY)
        if missing or epoch is None:
            reason = (
                f"missing consumer group(s): {', '.join(f'{g.stream}:{g.group}' for g in missing)}"
                if missing
                else f"no deployment epoch ({EPOCH_KEY}): Redis is not provisioned"
            )
            self.health.set_not_ready(reason + "; run minicloud-provision", fatal=True)
            self.log.critical("refusing to start", reason=reason)
            raise RuntimeError(reason)
        self._epoch = text(epoch)
        # A runtime started again after stop() retries Redis outages again (stop() made
        # the batch in hand give up on them rather than wait).
        self.committer.stopping = False
        pipeline = Pipeline(self.committer)
        for sub in self._subs.values():
            sub.queue = asyncio.Queue(maxsize=1)
            self._spawn(pipeline.run(sub), f"process-{sub.stream}")
        await broker.start()
        self._started = True
        self.health.set_ready()
        self._spawn(self._watch(), "watch")
        for interval, make in self._tickers:
            self._spawn(tick_loop(lambda: self.redis, self.clock, self.service, interval, make), "tick")
        if self._logs:
            self._spawn(log_trim_loop(lambda: self.redis, self._logs), "logtrim")
        if self.settings.trim_interval_s > 0 and self._owned_streams:
            s = self.settings
            self._spawn(
                trim_loop(lambda: self.redis, self._owned_streams, s.trim_interval_s, s.retention_s, self.log), "trim"
            )
        await self._start_health_server()
        self.log.info(
            "consuming", consumer=self.consumer_name, streams=[s.stream for s in self._subs.values()], epoch=self._epoch
        )

    def _spawn(self, work: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=f"{self.service}-{name}"))

    async def _start_health_server(self) -> None:
        if self.settings.health_port and self._health_server is None:
            s = self.settings
            self._health_server = HealthServer(
                self.health, self.service, s.health_host, s.health_port, metrics=self.metrics_text
            )
            await self._health_server.start()

    async def stop(self) -> None:
        """Stop reading; the batch in hand finishes or stays pending (nothing is lost)."""
        if self._broker is not None and self._started:
            try:
                await asyncio.wait_for(self._broker.stop(), timeout=10)
            except TimeoutError:
                self.log.warning("the broker did not stop within 10 s; going on")
        self._started = False
        # Let batches already read finish (bounded); what does not finish stays pending.
        for sub in self._subs.values():
            if sub.queue is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.queue.join(), timeout=10)
        self.committer.stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Every wait here is bounded: a task that does not end when cancelled
            # (e.g. stuck inside a library's shutdown) is reported, not waited for.
            _, stuck = await asyncio.wait(self._tasks, timeout=10)
            for task in stuck:
                self.log.warning("task did not stop within 10 s", task=task.get_name())
        self._tasks.clear()
        for sub in self._subs.values():
            sub.queue = None
        if self._health_server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_server.stop(), timeout=5)
            self._health_server = None
        if self.committer.redis is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.committer.redis.aclose(), timeout=5)
            self.committer.redis = None

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM (the entrypoint of a service process)."""
        await self._start_health_server()  # answers "not ready" while Redis is unreachable
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            try:
                await self.start()
                break
            except TRANSIENT_ERRORS as exc:
                self.health.set_not_ready(f"redis unreachable: {exc}")
                self.log.warning("redis unreachable at start; retrying", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2)
            except RuntimeError:
                # Not provisioned / state lost: stay up, not ready, until stopped.
                await stop.wait()
        if not stop.is_set():
            await stop.wait()
        self.log.info("stopping")
        await self.stop()

    # --- supervision -------------------------------------------------------------------

    async def check_state(self) -> None:
        """One look at Redis: reachable, groups present, epoch unchanged."""
        try:
            epoch = await self.redis.get(EPOCH_KEY)
            missing = await missing_groups(self.redis, self.groups)
        except TRANSIENT_ERRORS as exc:
            if not self.health.fatal:
                self.health.set_not_ready(f"redis unreachable: {exc}")
            return
        lost: list[str] = []
        if epoch is None or text(epoch) != self._epoch:
            lost.append(f"deployment epoch {self._epoch} is gone (found {epoch!r}): Redis lost its state")
        if missing:
            lost.append("consumer group(s) gone: " + ", ".join(f"{g.stream}:{g.group}" for g in missing))
        if not lost:
            self.health.set_ready()
            return
        if not self.health.fatal:
            self.log.critical(
                "Redis lost this service's state; consuming stopped, groups NOT recreated. "
                "Restore Redis from its AOF, or re-provision deliberately and reconcile.",
                reasons=lost,
            )
            if self._broker is not None and self._started:
                self._started = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._broker.stop(), timeout=10)
        self.health.set_not_ready(*lost, fatal=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self.check_state()
