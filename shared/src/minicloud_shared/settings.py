"""Settings from environment variables (prefix ``MINICLOUD_``), with defaults that work
on a laptop with a local Redis.

Settings are read once, at the composition root of a process, and passed down:
nothing below the entrypoints reads the environment.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_consumer_name(service: str) -> str:
    """A consumer name unique to this process: service, host, pid and a random tag.

    Two processes must never share a consumer name in one group: Redis would treat
    them as one consumer and a restart would inherit the other's pending entries
    without the idle-time guard.
    """
    host = socket.gethostname().split(".")[0][:24]
    return f"{service}-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    """Runtime settings shared by every service."""

    model_config = SettingsConfigDict(env_prefix="MINICLOUD_", extra="ignore", frozen=True)

    service: str = Field("minicloud", description="Service name; also its consumer group name.")
    redis_url: str = Field("redis://localhost:6379/0", description="Redis URL, credentials included.")
    consumer_name: str | None = Field(None, description="Consumer name; unique per process when unset.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON otherwise."
    )
    log_level: str = Field("INFO")
    batch_size: int = Field(100, ge=1, le=10_000, description="Entries read per XREADGROUP (bounded).")
    block_ms: int = Field(1000, ge=1, description="How long one XREADGROUP blocks when idle.")
    reclaim_idle_ms: int = Field(
        60_000,
        ge=100,
        description="Pending entries idle this long are reclaimed from their (presumed dead) consumer. "
        "Keep it far above the slowest healthy handler.",
    )
    reclaim_poll_ms: int = Field(1000, ge=10, description="How often the reclaimer looks for idle entries.")
    max_deliveries: int = Field(
        5, ge=1, description="A message whose handler failed on this many deliveries is dead-lettered."
    )
    dedup_ttl_s: int = Field(
        30 * 24 * 3600,
        ge=60,
        description="How long an applied event id is remembered for deduplication (default 30 days).",
    )
    commit_retries: int = Field(20, ge=1, description="Optimistic-concurrency retries of one batch.")
    provision_on_start: bool = Field(True, description="Create missing streams and groups at id 0 on start.")
    health_host: str = Field("0.0.0.0")
    health_port: int = Field(0, ge=0, le=65535, description="HTTP health port; 0 disables the server.")
    health_interval_s: float = Field(2.0, gt=0, description="How often Redis state (groups, epoch) is checked.")
    trim_interval_s: float = Field(0.0, ge=0, description="Safe-trim period for owned streams; 0 disables.")
    retention_s: int = Field(24 * 3600, ge=0, description="Entries younger than this are never trimmed.")
    clock: str = Field("system", description="'system' or 'accelerated:<factor>[@<ISO start>[~<Unix time of start>]]'.")
    tick_s: float = Field(1.0, gt=0, description="How often time-driven work is checked, in clock seconds.")
    spot_notice_s: int = Field(
        30, ge=0, description="Scheduling: the notice spot work gets before it is stopped for other work."
    )
    backfill: Literal["easy", "conservative"] = Field(
        "easy",
        description=(
            "Scheduling: backfill by reservation. easy: the first blocked workload of each pool gets a reservation "
            "that later work may not delay; conservative: every blocked workload in a pass does."
        ),
    )
    placement_policy: Literal["bestfit", "fgd"] = Field(
        "bestfit",
        description=(
            "Scheduling: how a one-host request chooses among the hosts that fit. bestfit: the fullest; fgd: the "
            "one whose placement grows fragmentation the least against the recent mix of requests "
            "(docs/scheduling.md, measured in make bench)."
        ),
    )
    host_silence_s: float = Field(
        30.0, gt=0, description="Inventory: a host whose agent sent no heartbeat for this long is unreachable."
    )
    meter_interval_s: int = Field(
        60, ge=1, description="Metering: an open span gets a usage reading once this much event time has passed."
    )
    invoice_grace_s: int = Field(
        72 * 3600,
        ge=0,
        description=(
            "Billing: a month's invoice is final once all its usage is rated (the watermark), and at the latest"
            " this long after the month ends; what arrives later is billed late, on the next invoice."
        ),
    )

    def resolved_consumer_name(self) -> str:
        return self.consumer_name or default_consumer_name(self.service)
