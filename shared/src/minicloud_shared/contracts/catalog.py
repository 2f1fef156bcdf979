"""Every contract module of the cloud, imported once so the registry is complete.

Add each new contract module here: the schema snapshots, the AsyncAPI document and
the contract tests read the registry after importing this module.
"""

from __future__ import annotations

from minicloud_shared.contracts import agent, billing, envelope, inventory, metering, runtime, scheduling
from minicloud_shared.contracts.envelope import Payload, registered_types

MODULES = (envelope, runtime, inventory, scheduling, metering, billing, agent)


def contract_types() -> dict[str, type[Payload]]:
    """The cloud's own payload types (tests and benchmarks register others)."""
    return {t: c for t, c in registered_types().items() if c.__module__.startswith("minicloud_")}
