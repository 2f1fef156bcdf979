"""``python -m minicloud_metering`` runs the service; ``... reconcile [--fix] [--json]``
compares metering's spans and usage with the allocation lifecycle and reports gaps
(exit code 1 if there are any)."""

import json
import sys

from redis.asyncio import Redis

from minicloud_metering.app import SERVICE, build
from minicloud_metering.reconcile import reconcile
from minicloud_shared.runtime.entrypoint import main, query_main


async def _reconcile(redis: Redis, as_json: bool) -> str:
    report = await reconcile(redis, fix="--fix" in sys.argv)
    _gaps.append(len(report.gaps))
    return json.dumps(report.as_dict(), indent=2) if as_json else report.render()


_gaps: list[int] = []

if len(sys.argv) > 1 and sys.argv[1] == "reconcile":
    code = query_main(SERVICE, "reconcile", _reconcile)
    raise SystemExit(code or (1 if _gaps and _gaps[0] else 0))
raise SystemExit(main(SERVICE, build))
