"""The placement engine's view of the fleet, kept true within one process.

The view (``placement.Fleet``) is an in-memory index of scheduling's host records,
used to choose quickly. It follows the host log (``mc.scheduling.hostlog``): every
committed host change is appended there with its version, and a replica reloads the
records whose version it does not hold. A replica that fell behind a trimmed log, or
whose batch was refused, reloads what it may have mis-assumed. The commit checks the
versions of every host record a placement read, so a stale view costs a retry, never
a GPU in two allocations.
"""

from __future__ import annotations

import structlog

from minicloud_scheduling import store
from minicloud_scheduling.metrics import SchedulingMetrics
from minicloud_scheduling.placement import Fleet, Policy
from minicloud_scheduling.queue import BACKFILL, Backfill
from minicloud_shared.contracts import decode
from minicloud_shared.contracts.scheduling import SCHEDULING_HOSTLOG, HostChanged
from minicloud_shared.runtime import Transaction

log = structlog.get_logger(service=store.SERVICE)


def entry_after(entry_id: str, position: str) -> bool:
    """Whether stream entry ``entry_id`` comes after the one after ``position``."""
    ms, _, seq = entry_id.partition("-")
    pms, _, pseq = position.partition("-")
    return (int(ms), int(seq)) > (int(pms), int(pseq) + 1)


class FleetCache:
    def __init__(self, spot_notice_s: int = 30, backfill: Backfill = BACKFILL, policy: Policy = "bestfit") -> None:
        self.fleet = Fleet(policy)
        # The notice spot work gets before it is stopped (like GCP's 30 s; AWS gives 2
        # minutes): a setting of the process, kept here beside its other state.
        self.spot_notice_s = spot_notice_s
        self.backfill: Backfill = backfill  # the queue's backfill policy (queue.plan)
        self.loaded = False
        self.stale: set[str] = set()
        self.log_position = "0-0"  # how far this replica has followed the host log
        self.metrics = SchedulingMetrics()  # build() puts them in the runtime's registry

    async def sync(self, tx: Transaction) -> None:
        """Load the fleet on first use; reload hosts whose state we may have mis-assumed."""
        redis = tx.redis
        if self.loaded and self.log_position != "0-0":
            first = await store.host_log_first(redis, SCHEDULING_HOSTLOG)
            if first is not None and entry_after(first, self.log_position):
                # Entries we never read were trimmed: we may have missed changes.
                log.info("host log trimmed past this replica's position; reloading the fleet")
                self.loaded = False
        if not self.loaded:
            # Follow the log from where it is now, then load everything: a change
            # between the two is seen twice, never missed.
            self.log_position = await store.host_log_last(redis, SCHEDULING_HOSTLOG) or "0-0"
            self.stale.update(await store.host_ids(redis))
            self.loaded = True
        else:
            for entry_id, fields in await store.host_log_after(redis, SCHEDULING_HOSTLOG, self.log_position):
                self.log_position = entry_id
                change = decode(fields).payload
                assert isinstance(change, HostChanged)
                known = self.fleet.hosts.get(change.host_id)
                if known is None or known.version != change.version:
                    self.stale.add(change.host_id)
        if not self.stale:
            return
        hosts, self.stale = sorted(self.stale), set()
        for host_id, view in (await store.host_views(redis, hosts)).items():
            if view is None:
                self.fleet.remove(host_id)
            else:
                self.fleet.upsert(view)

    def forget(self, host_ids: list[str]) -> None:
        """These hosts' views may be wrong (a refused commit): reload them before use."""
        self.stale.update(host_ids)
