"""Contracts consumers can rely on, without Redis: every contract is compatible with
the last released one, and every consumer's declaration names exactly the events its
handlers consume."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from minicloud_shared.contracts import catalog
from minicloud_shared.contracts.consumers import Reads, compatibility, released_snapshots
from minicloud_shared.contracts.envelope import has_upcaster
from minicloud_shared.contracts.runtime import DeadLettered
from minicloud_shared.contracts.snapshot import schemas
from minicloud_shared.contracts.topology import STREAMS
from minicloud_shared.runtime import ServiceRuntime
from minicloud_shared.settings import Settings


def test_every_contract_is_compatible_with_the_last_release() -> None:
    release, released = released_snapshots()
    assert released, f"no released contracts in {release}"
    current = schemas()
    by_type = {s["x-event-type"]: s for s in current.values() if "x-event-type" in s}
    problems = []
    for old in released.values():
        event_type, version = old["x-event-type"], old["x-schema-version"]
        new = by_type.get(event_type)
        if new is None:
            problems.append(f"{event_type}: removed since {release}")
        elif new["x-schema-version"] == version:
            problems += [f"{event_type} v{version}: {p}" for p in compatibility(old, new)]
        else:
            missing = [v for v in range(version, new["x-schema-version"]) if not has_upcaster(event_type, v)]
            if missing:
                problems.append(f"{event_type}: v{new['x-schema-version']} has no upcaster from v{missing[0]}")
    assert not problems, "breaking contract changes:\n" + "\n".join(problems)


def _schema() -> dict[str, Any]:
    return {
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"anyOf": [{"type": "string"}]}},
        "required": ["a"],
    }


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (lambda s: s["properties"].pop("b"), "field b removed"),
        (lambda s: s["properties"].__setitem__("b", {"type": "string"}), "field b retyped"),
        (lambda s: s["required"].append("c"), "field c became required"),
        (lambda s: (s["properties"].__setitem__("d", {"type": "string"}), s["required"].append("d")), "field d became"),
    ],
)
def test_the_check_finds_each_kind_of_breaking_change(change: Any, found: str) -> None:
    new = copy.deepcopy(_schema())
    change(new)
    assert any(p.startswith(found) for p in compatibility(_schema(), new)), compatibility(_schema(), new)


def test_adding_an_optional_field_is_compatible() -> None:
    new = copy.deepcopy(_schema())
    new["properties"]["d"] = {"type": "string"}
    assert compatibility(_schema(), new) == []


def _consumers() -> dict[str, tuple[Any, list[Reads]]]:
    from minicloud_billing import app as billing
    from minicloud_billing import consumes as billing_reads
    from minicloud_gateway import app as gateway
    from minicloud_gateway import consumes as gateway_reads
    from minicloud_inventory import app as inventory
    from minicloud_inventory import consumes as inventory_reads
    from minicloud_metering import app as metering
    from minicloud_metering import consumes as metering_reads
    from minicloud_scheduling import app as scheduling
    from minicloud_scheduling import consumes as scheduling_reads

    return {
        "inventory": (inventory.build, inventory_reads.READS),
        "scheduling": (scheduling.build, scheduling_reads.READS),
        "metering": (metering.build, metering_reads.READS),
        "billing": (billing.build, billing_reads.READS),
        "gateway": (gateway.build, gateway_reads.READS),
    }


@pytest.mark.parametrize("service", ["inventory", "scheduling", "metering", "billing", "gateway"])
def test_each_consumer_declares_exactly_the_events_it_consumes_from_others(service: str) -> None:
    build, reads = _consumers()[service]
    runtime = ServiceRuntime(service, Settings(service=service, redis_url="redis://unused"))
    build(runtime)
    consumed = {
        event_type
        for sub in runtime.subscriptions
        if sub.stream in STREAMS and STREAMS[sub.stream].owner != service
        for event_type in sub.routes
        if event_type != DeadLettered.event_type
    }
    declared = {r.event_type for r in reads}
    assert declared == consumed, f"declared but not consumed: {declared - consumed}; consumed: {consumed - declared}"
    for r in reads:
        unknown = r.fields - set(r.payload.model_fields)
        assert not unknown, f"{service} declares {r.event_type} fields the contract has not: {unknown}"
        assert catalog.contract_types()[r.event_type].schema_version >= r.version
