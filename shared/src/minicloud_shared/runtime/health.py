"""Liveness and readiness, and a tiny HTTP server that reports them.

``GET /healthz``: the process is up. ``GET /readyz``: 200 when Redis is reachable, the
service's groups exist and the deployment epoch is the one it started with; 503 with
the reasons otherwise. Both answer JSON. ``GET /metrics``: the runtime's Prometheus
metrics (``runtime/metrics.py``), in the text format. No framework: the services that consume
streams need nothing more, and the gateway has its own HTTP stack.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from minicloud_shared.runtime.metrics import CONTENT_TYPE


@dataclass
class Health:
    ready: bool = False
    reasons: list[str] = field(default_factory=lambda: ["starting"])
    fatal: bool = False

    def set_ready(self) -> None:
        if not self.fatal:
            self.ready, self.reasons = True, []

    def set_not_ready(self, *reasons: str, fatal: bool = False) -> None:
        self.ready = False
        self.reasons = list(reasons)
        self.fatal = self.fatal or fatal

    def as_dict(self) -> dict[str, object]:
        return {"ready": self.ready, "fatal": self.fatal, "reasons": self.reasons}


class HealthServer:
    def __init__(
        self,
        health: Health,
        service: str,
        host: str,
        port: int,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self._health = health
        self._metrics = metrics
        self._service = service
        self._host = host
        self._port = port
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if path == "/metrics" and self._metrics is not None:
                await self._reply(writer, 200, await self._metrics(), CONTENT_TYPE)
                return
            if path == "/healthz":
                status, body = 200, {"service": self._service, "live": True}
            elif path == "/readyz":
                ok = self._health.ready
                status, body = (200 if ok else 503), {"service": self._service, **self._health.as_dict()}
            else:
                status, body = 404, {"error": "not_found"}
            await self._reply(writer, status, json.dumps(body).encode(), "application/json")
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, payload: bytes, content_type: str) -> None:
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
