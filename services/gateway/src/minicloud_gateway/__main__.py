"""``python -m minicloud_gateway``: the public API and the gateway's projections in one
process. The API listens on ``MINICLOUD_HEALTH_PORT`` (8080 when unset) and answers
``/healthz``, ``/readyz`` and ``/metrics`` there too; the operator key comes from
``MINICLOUD_OPERATOR_KEY`` (registered at start, stored as a digest)."""

import asyncio
import os
import sys

import uvicorn

from minicloud_gateway.api import create_app
from minicloud_gateway.app import SERVICE, build
from minicloud_gateway.history import sample_forever
from minicloud_gateway.identity import bootstrap_operator
from minicloud_shared.runtime.entrypoint import create_runtime, tune_gc
from minicloud_shared.settings import Settings


async def serve() -> int:
    settings = Settings(service=SERVICE)
    port = settings.health_port or 8080
    runtime = create_runtime(SERVICE, build, settings.model_copy(update={"health_port": 0}))
    await runtime.start()
    operator_key = os.environ.get("MINICLOUD_OPERATOR_KEY")
    if operator_key:
        try:
            await bootstrap_operator(runtime.redis, operator_key)
        except ValueError as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            await runtime.stop()
            return 2
    env = os.environ.get
    sample_s = float(env("MINICLOUD_CAPACITY_SAMPLE_S", "60"))
    app = create_app(
        runtime.redis,
        runtime.health,
        rate_per_s=int(env("MINICLOUD_RATE_LIMIT_PER_S", "50")),
        clock=runtime.clock,
        max_lag=int(env("MINICLOUD_READY_MAX_LAG", "1000")),
        anonymous_rate_per_s=int(env("MINICLOUD_ANONYMOUS_RATE_PER_S", "20")),
        memory_fraction=float(env("MINICLOUD_MEMORY_GUARD_FRACTION", "0.8")),
        memory_every_s=float(env("MINICLOUD_MEMORY_CHECK_S", "1")),
        runtime_metrics=runtime.metrics_text,
        capacity_every_s=sample_s,
    )
    server = uvicorn.Server(uvicorn.Config(app, host=settings.health_host, port=port, log_level="warning"))
    sampler = asyncio.create_task(sample_forever(runtime.redis, runtime.clock, sample_s))
    try:
        await server.serve()
    finally:
        sampler.cancel()
        await runtime.stop()
    return 0


tune_gc()
raise SystemExit(asyncio.run(serve()))
