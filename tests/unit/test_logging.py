"""Logs are JSON lines (off a terminal) carrying the service and the message context."""

from __future__ import annotations

import json

import pytest

from minicloud_shared.logs import configure_logging, message_context


def test_json_lines_carry_service_and_message_context(capsys: pytest.CaptureFixture[str]) -> None:
    log = configure_logging("metering", "json", "INFO")
    token = message_context.set(
        {"event_type": "minicloud.x.y", "event_id": "e-1", "correlation_id": "c-1", "tenant_id": "t-1"}
    )
    try:
        log.info("handled", gpu_seconds=60)
    finally:
        message_context.reset(token)
    log.info("outside any message")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0] | {"timestamp": None} == {
        "event": "handled",
        "gpu_seconds": 60,
        "service": "metering",
        "event_type": "minicloud.x.y",
        "event_id": "e-1",
        "correlation_id": "c-1",
        "tenant_id": "t-1",
        "level": "info",
        "timestamp": None,
    }
    assert "event_id" not in lines[1]
    assert lines[1]["service"] == "metering"


def test_faststream_extra_is_flattened(capsys: pytest.CaptureFixture[str]) -> None:
    log = configure_logging("billing", "json", "INFO")
    log.log(20, "Received", extra={"channel": "mc.metering.usage", "message_id": "abc"})
    line = json.loads(capsys.readouterr().out)
    assert line["channel"] == "mc.metering.usage"
    assert line["message_id"] == "abc"
    assert "extra" not in line


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    log = configure_logging("billing", "json", "WARNING")
    log.info("hidden")
    log.warning("shown")
    out = capsys.readouterr().out
    assert "hidden" not in out
    assert "shown" in out


def test_service_module_loggers_follow_the_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    """Module-level loggers are created at import, before logging is configured: they
    must still honour the level and format configured later."""
    from minicloud_scheduling import app

    configure_logging("scheduling", "json", "WARNING")
    app.log.info("not shown")
    app.log.warning("shown")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["service"] == "scheduling"
