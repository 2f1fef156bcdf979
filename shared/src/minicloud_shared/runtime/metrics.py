"""The runtime's Prometheus metrics, per stream and consumer group.

Every service that runs on the runtime exposes them at ``GET /metrics`` on its health
port (``runtime/health.py``), in the Prometheus text format. Label sets are bounded:
``stream`` and ``group`` (a service has a handful of subscriptions), ``outcome`` and
``reason`` (fixed sets). Never a tenant, workload or event id.

Counters and histograms are updated as batches are settled. Lag, pending entries and
dead letters are Redis' own figures, read when Prometheus scrapes (``XINFO GROUPS``
and ``XLEN`` per subscription: a few commands per scrape, not per message).
``docs/operations.md`` lists every metric and what to do when its alert fires.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from minicloud_shared.contracts.envelope import text
from minicloud_shared.runtime.routing import Subscription

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("applied", "duplicate", "ignored", "dead_lettered", "failed")
REFUSALS = ("conflict", "duplicate", "not_pending")
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SIZES = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


class RuntimeMetrics:
    """One service's runtime metrics, in a registry of its own (a test process may hold
    several runtimes; the global registry would mix them)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r, sg = self.registry, ("stream", "group")
        self.messages = Counter(
            "minicloud_runtime_messages", "Messages settled, by outcome", [*sg, "outcome"], registry=r
        )
        self.commits = Counter("minicloud_runtime_commits", "Batches committed (accepted)", sg, registry=r)
        self.refused = Counter(
            "minicloud_runtime_commits_refused",
            "Commits the commit script refused, by reason (the batch runs again)",
            [*sg, "reason"],
            registry=r,
        )
        self.events = Counter(
            "minicloud_runtime_events_emitted",
            "Events this service published, by type (counted when their commit lands: exactly once)",
            ["type"],
            registry=r,
        )
        self.reclaims = Counter(
            "minicloud_runtime_reclaims", "Entries taken over from a consumer that held them too long", sg, registry=r
        )
        self.redis_errors = Counter(
            "minicloud_runtime_redis_errors", "Redis unreachable or timing out (the batch is retried)", registry=r
        )
        self.batch_size = Histogram(
            "minicloud_runtime_batch_size", "Entries per batch read", sg, buckets=_SIZES, registry=r
        )
        self.handler_seconds = Histogram(
            "minicloud_runtime_handler_seconds",
            "Time to run a batch's handlers and build its commit plan",
            sg,
            buckets=_SECONDS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "minicloud_runtime_commit_seconds",
            "Time from sending a batch's commit to its reply",
            sg,
            buckets=_SECONDS,
            registry=r,
        )
        self.lag = Gauge("minicloud_stream_lag", "Entries in the stream the group has not read yet", sg, registry=r)
        self.pending = Gauge(
            "minicloud_stream_pending", "Entries read by the group and not yet acknowledged", sg, registry=r
        )
        self.dead_letters = Gauge(
            "minicloud_stream_dead_letters",
            "Entries in the group's dead-letter stream (kept for an operator)",
            sg,
            registry=r,
        )
        self.ready = Gauge("minicloud_ready", "1 while the service is ready (what /readyz answers), else 0", registry=r)
        self.scrape_errors = Counter(
            "minicloud_metrics_scrape_errors", "Scrapes that could not read Redis' figures", registry=r
        )

        # A service's own figures read from Redis at scrape time (``refresh_with``).
        self._refreshers: list[Callable[[Redis], Awaitable[None]]] = []

    def refresh_with(self, refresher: Callable[[Redis], Awaitable[None]]) -> None:
        """Also run ``refresher`` at every scrape: a service's gauges whose figures are
        in Redis (a queue's length, GPUs by state), read when asked, not per message."""
        self._refreshers.append(refresher)

    def declare(self, subs: Sequence[Subscription]) -> None:
        """Create every labelled series at zero, so that a rate over a series that has
        not moved yet is 0, not missing (and an alert on it can be written at all)."""
        for sub in subs:
            labels = (sub.stream, sub.group)
            for outcome in OUTCOMES:
                self.messages.labels(*labels, outcome)
            for reason in REFUSALS:
                self.refused.labels(*labels, reason)
            self.commits.labels(*labels)
            self.reclaims.labels(*labels)

    async def refresh(self, redis: Redis, subs: Sequence[Subscription]) -> None:
        """Read lag, pending entries and dead letters from Redis (called per scrape).
        A subscription whose figures cannot be read keeps its last values and counts a
        scrape error; the others are still read."""
        for sub in subs:
            labels = (sub.stream, sub.group)
            try:
                groups: Any = await redis.xinfo_groups(sub.stream)
                mine = next((g for g in groups if text(g.get("name", b"")) == sub.group), None)
                if mine is not None:
                    lag = mine.get("lag")
                    # Redis answers nil for lag when it cannot tell (entries deleted
                    # from the middle of the stream): shown as NaN, not as 0.
                    self.lag.labels(*labels).set(float("nan") if lag is None else int(lag))
                    self.pending.labels(*labels).set(int(mine.get("pending", 0)))
                self.dead_letters.labels(*labels).set(int(await redis.xlen(sub.dead_letter_stream)))
            except RedisError:
                self.scrape_errors.inc()
        for refresher in self._refreshers:
            try:
                await refresher(redis)
            except RedisError:
                self.scrape_errors.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
