"""``python -m minicloud_gateway.openapi [PATH]``: write the public API's OpenAPI
document (``make docs`` writes docs/openapi.json; a test fails when it drifts)."""

from __future__ import annotations

import json
import sys
from typing import Any

from redis.asyncio import Redis

from minicloud_gateway.api import create_app
from minicloud_shared.runtime import Health


def document() -> dict[str, Any]:
    # No connection is made: the client is only handed to the routes.
    doc: dict[str, Any] = create_app(Redis.from_url("redis://localhost:1/0"), Health()).openapi()
    return doc


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/openapi.json"
    with open(path, "w") as f:
        f.write(render())
    print(f"wrote {path}: {len(document()['paths'])} paths")
