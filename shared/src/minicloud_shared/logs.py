"""structlog, configured once per process.

JSON lines when stdout is not a terminal (containers, CI), a readable console
otherwise. The same logger is handed to FastStream, whose own context arrives nested
under ``extra`` and is flattened here. Per-message context (service, event_type,
event_id, correlation_id, tenant_id) is bound by the runtime with contextvars, so
every line logged while a message is handled carries it.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, WrappedLogger

_configured: dict[str, Any] = {}

# The context of the message being handled (event_type, event_id, correlation_id,
# tenant_id, entry_id). One ContextVar set once per message: structlog's own
# bound_contextvars costs two context switches per key per message, a measurable
# share of the hot path.
message_context: ContextVar[dict[str, Any] | None] = ContextVar("minicloud_message_context", default=None)


def _merge_message_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ctx = message_context.get()
    if ctx:
        for key, value in ctx.items():
            event_dict.setdefault(key, value)
    return event_dict


def _flatten_extra(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    extra = event_dict.pop("extra", None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            event_dict.setdefault(str(key), value)
    return event_dict


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)
    return event_dict


def configure_logging(
    service: str,
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "INFO",
) -> structlog.stdlib.BoundLogger:
    """Configure structlog for this process and return the service's logger.

    Calling it again reconfigures (tests do); the returned logger has ``service``
    bound.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _merge_message_context,
            _flatten_extra,
            _drop_color_message,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    _configured.update(service=service, json=use_json, level=numeric_level)
    logger: structlog.stdlib.BoundLogger = structlog.get_logger().bind(service=service)
    return logger


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    """A logger with ``bound`` context; configured or not, it never raises."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(**bound)
    return logger
