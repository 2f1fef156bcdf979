"""``python -m minicloud_inventory`` runs the service; ``... capacity [--json]`` prints the summary."""

import sys

from redis.asyncio import Redis

from minicloud_inventory.app import SERVICE, build
from minicloud_inventory.capacity import read_summary, render
from minicloud_shared.runtime.entrypoint import main, query_main


async def capacity(redis: Redis, as_json: bool) -> str:
    summary = await read_summary(redis)
    return summary.model_dump_json(indent=2) if as_json else render(summary)


if len(sys.argv) > 1 and sys.argv[1] == "capacity":
    raise SystemExit(query_main(SERVICE, "capacity", capacity))
raise SystemExit(main(SERVICE, build))
