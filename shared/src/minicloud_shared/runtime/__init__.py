"""The exactly-once consumer runtime on Redis Streams (see ``service`` for its parts)."""

from minicloud_shared.runtime.failpoints import Failpoints, SimulatedCrash
from minicloud_shared.runtime.health import Health
from minicloud_shared.runtime.provision import missing_groups, provision
from minicloud_shared.runtime.publishing import dead_letter_entry, publish
from minicloud_shared.runtime.routing import BatchOutcome, CommitError, Entry, Handler, Refused, Subscription
from minicloud_shared.runtime.service import ServiceRuntime
from minicloud_shared.runtime.transaction import KeyOutsideService, Transaction
from minicloud_shared.runtime.trim import TrimResult, safe_trim

__all__ = [
    "BatchOutcome",
    "CommitError",
    "Entry",
    "Failpoints",
    "Handler",
    "Health",
    "KeyOutsideService",
    "Refused",
    "ServiceRuntime",
    "SimulatedCrash",
    "Subscription",
    "Transaction",
    "TrimResult",
    "dead_letter_entry",
    "missing_groups",
    "provision",
    "publish",
    "safe_trim",
]
