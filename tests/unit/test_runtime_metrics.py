"""The runtime's Prometheus metrics: names by the conventions, series declared at zero,
and a subscription whose figures Redis refuses does not hide the others'."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import NoPermissionError

from minicloud_shared.runtime.metrics import OUTCOMES, REFUSALS, RuntimeMetrics
from minicloud_shared.runtime.routing import Subscription


def samples(m: RuntimeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(m.render().decode())
        for s in family.samples
    }


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
    got = samples(m)
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
    got = samples(m)
    a = (("group", "svc"), ("stream", "mc.a.events"))
    assert got[("minicloud_stream_lag", a)] == 3  # its own group's, not another's
    assert got[("minicloud_stream_pending", a)] == 2
    assert got[("minicloud_stream_dead_letters", a)] == 4
    assert ("minicloud_stream_lag", (("group", "svc"), ("stream", "mc.b.forbidden"))) not in got
    assert got[("minicloud_metrics_scrape_errors_total", ())] == 1
    assert all(name.startswith("minicloud_") for name, _ in got)
