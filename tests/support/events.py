"""Payload types that exist only for the runtime's tests."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from minicloud_shared.contracts import Payload, register

TEST_STREAM = "mc.testsvc.ticks"
TEST_OUT_STREAM = "mc.testsvc.tocks"


@register
class Tick(Payload):
    """A unit of work for the test service: its effect is counted per ``n``."""

    event_type: ClassVar[str] = "minicloud.test.tick"
    stream: ClassVar[str] = TEST_STREAM

    n: int = Field(description="Sequence number", examples=[1], ge=0)
    account: str = Field("a", description="Aggregate it adds to", examples=["a"])
    fail: bool = Field(False, description="The handler raises on it", examples=[False])
    sleep_s: float = Field(0.0, description="The handler takes this long", examples=[0.0])


@register
class Tock(Payload):
    """What the test service emits for each tick."""

    event_type: ClassVar[str] = "minicloud.test.tock"
    stream: ClassVar[str] = TEST_OUT_STREAM

    n: int = Field(description="The tick's sequence number", examples=[1])
