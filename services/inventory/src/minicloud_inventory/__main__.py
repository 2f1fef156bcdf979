"""``python -m minicloud_inventory`` runs the service; ``... capacity [--json]`` prints the summary."""

import asyncio
import sys

from redis.asyncio import Redis

from minicloud_inventory.app import SERVICE, build
from minicloud_inventory.capacity import read_summary, render
from minicloud_shared.runtime.entrypoint import main
from minicloud_shared.settings import Settings


async def _capacity(as_json: bool) -> int:
    redis = Redis.from_url(Settings(service=SERVICE).redis_url)
    try:
        summary = await read_summary(redis)
    finally:
        await redis.aclose()
    print(summary.model_dump_json(indent=2) if as_json else render(summary))
    return 0


if len(sys.argv) > 1 and sys.argv[1] == "capacity":
    try:
        raise SystemExit(asyncio.run(_capacity("--json" in sys.argv)))
    except OSError as exc:  # pragma: no cover - message for a person, not a traceback
        print(f"inventory capacity: cannot reach Redis: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
raise SystemExit(main(SERVICE, build))
