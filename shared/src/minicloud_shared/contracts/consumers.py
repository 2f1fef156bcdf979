"""Consumer-driven contracts: what each consuming service reads of the events it
consumes, declared beside its code (``minicloud_<service>.consumes``), checked against
what the producers really emit, and a compatibility check of every contract against
the last released one.

A producer may add fields and events freely; it may not, under the same
``schema_version``, remove or retype a field, make a new field required, or stop
emitting a field a consumer declared it reads. A breaking change comes as a new
``schema_version`` with an upcaster from the old one (``contracts.upcaster``), so a
consumer built for either version reads both.

- ``tests/contract/test_consumer_contracts.py`` drives the producing services with
  commands on a real Redis and checks every event they emit against every consumer's
  declaration (``check_emitted``);
- ``compatibility`` compares a contract's JSON Schema with its released snapshot
  (``docs/schemas/released/<release>/``, committed by hand at a release: unlike
  ``docs/schemas/``, ``make schemas`` never rewrites it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minicloud_shared.contracts.envelope import (
    F_DATA,
    F_SCHEMA_VERSION,
    F_TYPE,
    NoUpcaster,
    Payload,
    text,
    upcast,
)

RELEASED_DIR = Path(__file__).resolve().parents[4] / "docs" / "schemas" / "released"


@dataclass(frozen=True)
class Reads:
    """A consumer reads these fields of this payload type, written at this schema version."""

    payload: type[Payload]
    fields: frozenset[str]
    version: int = 1

    def __init__(self, payload: type[Payload], fields: Iterable[str], version: int = 1) -> None:
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "fields", frozenset(fields))
        object.__setattr__(self, "version", version)

    @property
    def event_type(self) -> str:
        return self.payload.event_type


def check_emitted(consumer: str, reads: Reads, entry: Mapping[bytes | str, bytes | str]) -> list[str]:
    """What is wrong with an emitted entry for ``consumer``'s declaration (empty: nothing)."""
    fields = {text(k): text(v) for k, v in entry.items()}
    if fields.get(F_TYPE) != reads.event_type:
        return []
    problems = []
    version = int(fields.get(F_SCHEMA_VERSION, "1"))
    data: dict[str, Any] = json.loads(fields.get(F_DATA, "{}"))
    try:
        # An older version is upcast (what the consumer sees); a newer one is read
        # tolerantly, its unknown fields dropped (contracts.envelope.decode_payload).
        data = upcast(reads.event_type, data, version, reads.version)
    except NoUpcaster:
        problems.append(f"{consumer} reads {reads.event_type} v{reads.version}; the producer wrote v{version}")
    missing = sorted(reads.fields - set(data))
    if missing:
        problems.append(f"{consumer} reads {reads.event_type}.{', '.join(missing)}; the producer did not write it")
    return problems


def _props(schema: Mapping[str, Any]) -> dict[str, Any]:
    return dict(schema.get("properties", {}))


def _type_of(prop: Mapping[str, Any]) -> Any:
    """A property's type as JSON Schema says it (type, anyOf, $ref, enum, const)."""
    return {k: prop[k] for k in ("type", "anyOf", "$ref", "enum", "const", "items", "format") if k in prop}


def compatibility(released: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Breaking changes from ``released`` to ``current`` (the same payload type and
    version): a property removed or retyped, or a new required property."""
    problems = []
    old, new = _props(released), _props(current)
    for name, prop in old.items():
        if name not in new:
            problems.append(f"field {name} removed")
        elif _type_of(new[name]) != _type_of(prop):
            problems.append(f"field {name} retyped: {_type_of(prop)} -> {_type_of(new[name])}")
    for name in sorted(set(current.get("required", [])) - set(released.get("required", []))):
        problems.append(f"field {name} became required")
    return problems


def released_snapshots(release: str | None = None) -> tuple[str, dict[str, dict[str, Any]]]:
    """The released contracts (the newest release unless named): name -> JSON Schema."""
    releases = sorted(p.name for p in RELEASED_DIR.iterdir() if p.is_dir())
    name = release or releases[-1]
    return name, {p.name: json.loads(p.read_text()) for p in sorted((RELEASED_DIR / name).glob("*.v*.json"))}
