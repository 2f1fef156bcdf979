"""``python -m minicloud_scheduling`` runs the service; ``... largest-gangs [--json]``
prints the largest gang placeable now per SKU and region."""

import json
import sys

from redis.asyncio import Redis

from minicloud_scheduling.app import SERVICE, build
from minicloud_scheduling.queries import largest_gangs, render
from minicloud_shared.runtime.entrypoint import main, query_main


async def largest(redis: Redis, as_json: bool) -> str:
    rows = await largest_gangs(redis)
    return json.dumps(rows, indent=2) if as_json else render(rows)


if len(sys.argv) > 1 and sys.argv[1] == "largest-gangs":
    raise SystemExit(query_main(SERVICE, "largest-gangs", largest))
raise SystemExit(main(SERVICE, build))
