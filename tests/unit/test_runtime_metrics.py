"""The runtime's Prometheus metrics: names by the conventions, series declared at zero,
and a subscription whose figures Redis refuses does not hide the others'."""

from __future__ import annotations

from typing import Any

from redis.exceptions import NoPermissionError

from minicloud_shared.runtime.metrics import OUTCOMES, REFUSALS, RuntimeMetrics
from minicloud_shared.runtime.routing import Subscription
from tests.support.harness import samples


class FakeRedis:
    async def xinfo_groups(self, stream: str) -> list[dict[bytes | str, Any]]:
        if stream == "mc.b.forbidden":
            raise NoPermissionError("no permissions")
        return [{"name": b"other", "lag": 9, "pending": 9}, {"name": b"svc", "lag": 3, "pending": 2}]

    async def xlen(self, stream: str) -> int:
        return 4


async def test_series_are_declared_at_zero_and_figures_read_per_subscription() -> None:
    m = RuntimeMetrics("svc")
    subs = [Subscription("mc.a.events", "svc", 100), Subscription("mc.b.forbidden", "svc", 100)]
    m.declare(subs)
    got = samples(m.render())
    for outcome in OUTCOMES:
        assert (
            got[
                (
                    "minicloud_runtime_messages_total",
                    (("group", "svc"), ("outcome", outcome), ("stream", "mc.a.events")),
                )
            ]
            == 0
        )
    for reason in REFUSALS:
        key = (
            "minicloud_runtime_commits_refused_total",
            (("group", "svc"), ("reason", reason), ("stream", "mc.a.events")),
        )
        assert got[key] == 0
    await m.refresh(FakeRedis(), subs)
    got = samples(m.render())
    a = (("group", "svc"), ("stream", "mc.a.events"))
    assert got[("minicloud_stream_lag", a)] == 3  # its own group's, not another's
    assert got[("minicloud_stream_pending", a)] == 2
    assert got[("minicloud_stream_dead_letters", a)] == 4
    assert ("minicloud_stream_lag", (("group", "svc"), ("stream", "mc.b.forbidden"))) not in got
    assert got[("minicloud_metrics_scrape_errors_total", ())] == 1
    assert all(name.startswith("minicloud_") for name, _ in got)
