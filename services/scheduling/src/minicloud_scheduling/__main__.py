"""``python -m minicloud_scheduling`` runs the service; ``... largest-gangs [--json]``
prints the largest gang placeable now per SKU and region."""

import asyncio
import json
import sys

from redis.asyncio import Redis

from minicloud_scheduling.app import SERVICE, build
from minicloud_scheduling.queries import largest_gangs, render
from minicloud_shared.runtime.entrypoint import main
from minicloud_shared.settings import Settings


async def _largest(as_json: bool) -> int:
    redis = Redis.from_url(Settings(service=SERVICE).redis_url)
    try:
        rows = await largest_gangs(redis)
    finally:
        await redis.aclose()
    print(json.dumps(rows, indent=2) if as_json else render(rows))
    return 0


if len(sys.argv) > 1 and sys.argv[1] == "largest-gangs":
    try:
        raise SystemExit(asyncio.run(_largest("--json" in sys.argv)))
    except OSError as exc:
        print(f"scheduling largest-gangs: cannot reach Redis: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
raise SystemExit(main(SERVICE, build))
