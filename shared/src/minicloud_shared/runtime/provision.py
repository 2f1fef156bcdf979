"""Provisioning: streams and consumer groups exist, at id 0, before anyone publishes.

FastStream creates a missing group at ``$`` when its subscriber starts, which skips
everything published before that moment. Provisioning creates every group of the
topology at ``0`` first (FastStream then finds it existing), and writes the
deployment's epoch marker. It is idempotent: run by the one-shot provisioner of the
compose stack, by ``minicloud-provision``, and by each service at start-up for its own
groups.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from minicloud_shared.contracts.envelope import text
from minicloud_shared.contracts.topology import EPOCH_KEY, GROUPS, GroupSpec


@dataclass
class ProvisionReport:
    created: list[GroupSpec] = field(default_factory=list)
    existing: list[GroupSpec] = field(default_factory=list)
    epoch: str = ""
    epoch_created: bool = False


async def provision(redis: Redis, groups: Iterable[GroupSpec] = GROUPS) -> ProvisionReport:
    """Create missing streams and groups at id 0, and the epoch marker if absent."""
    report = ProvisionReport()
    for spec in groups:
        try:
            await redis.xgroup_create(spec.stream, spec.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            report.existing.append(spec)
        else:
            report.created.append(spec)
    new_epoch = uuid.uuid4().hex
    # A user that may only read it (a host agent creating its own group): it must exist.
    with contextlib.suppress(NoPermissionError):
        report.epoch_created = bool(await redis.set(EPOCH_KEY, new_epoch, nx=True))
    epoch = await redis.get(EPOCH_KEY)
    report.epoch = text(epoch) if epoch is not None else ""  # set just above: present
    return report


async def missing_groups(redis: Redis, groups: Iterable[GroupSpec]) -> list[GroupSpec]:
    """The groups of ``groups`` that Redis does not have."""
    missing: list[GroupSpec] = []
    by_stream: dict[str, list[GroupSpec]] = {}
    for spec in groups:
        by_stream.setdefault(spec.stream, []).append(spec)
    for stream, specs in by_stream.items():
        try:
            infos = await redis.xinfo_groups(stream)
        except ResponseError:  # no such key
            missing.extend(specs)
            continue
        names = {(i["name"].decode() if isinstance(i["name"], bytes) else i["name"]) for i in infos}
        missing.extend(s for s in specs if s.group not in names)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="minicloud-provision",
        description="Create minicloud's streams and consumer groups (at id 0) and the epoch marker.",
    )
    parser.add_argument("--redis-url", default=None, help="default: $MINICLOUD_REDIS_URL or redis://localhost:6379/0")
    args = parser.parse_args(argv)
    from minicloud_shared.settings import Settings

    url = args.redis_url or Settings().redis_url

    async def run() -> ProvisionReport:
        redis = Redis.from_url(url)
        try:
            return await provision(redis)
        finally:
            await redis.aclose()

    try:
        report = asyncio.run(run())
    except Exception as exc:  # one clear line, no traceback
        print(f"minicloud-provision: cannot provision {url.split('@')[-1]}: {exc}", file=sys.stderr)
        return 1
    print(
        f"provisioned: {len(report.created)} group(s) created, {len(report.existing)} already there; "
        f"epoch {report.epoch}{' (new)' if report.epoch_created else ''}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
