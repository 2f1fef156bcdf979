"""JSON Schema snapshots of every contract, committed under docs/schemas/.

    python -m minicloud_shared.contracts.snapshot write   # make schemas
    python -m minicloud_shared.contracts.snapshot check   # exit 1 on drift

A test runs ``check``: a contract that changed without its snapshot being rewritten
(and reviewed) fails the build. One file per payload type and version
(``<event_type>.v<version>.json``), plus the envelope and the dead-letter fields.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from minicloud_shared.contracts import catalog
from minicloud_shared.contracts.envelope import (
    F_CAUSATION,
    F_CONTENT_TYPE,
    F_CORRELATION,
    F_DATA,
    F_ID,
    F_SCHEMA_VERSION,
    F_SOURCE,
    F_SPEC,
    F_TENANT,
    F_TIME,
    F_TYPE,
    Envelope,
)
from minicloud_shared.contracts.runtime import DeadLetter

DEFAULT_DIR = Path(__file__).resolve().parents[4] / "docs" / "schemas"

# How each envelope attribute is written as a stream field.
WIRE_FIELDS = {
    F_SPEC: "CloudEvents spec version, always 1.0",
    F_ID: "event_id",
    F_TYPE: "event_type",
    F_SCHEMA_VERSION: "schema_version",
    F_SOURCE: "producer",
    F_TIME: "occurred_at (RFC 3339, UTC)",
    F_TENANT: "tenant_id (absent when none)",
    F_CORRELATION: "correlation_id",
    F_CAUSATION: "causation_id (absent when none)",
    F_CONTENT_TYPE: "application/json",
    F_DATA: "the payload, JSON",
}


def schemas() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "envelope.json": Envelope.model_json_schema() | {"x-wire-fields": WIRE_FIELDS},
        "dead-letter.json": DeadLetter.model_json_schema(),
    }
    for event_type, cls in sorted(catalog.contract_types().items()):
        schema = cls.model_json_schema()
        schema["x-event-type"] = event_type
        schema["x-schema-version"] = cls.schema_version
        schema["x-stream"] = cls.stream
        out[f"{event_type}.v{cls.schema_version}.json"] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written


def drift(directory: Path = DEFAULT_DIR) -> list[str]:
    """What differs between the contracts and the committed snapshots, in words."""
    problems = []
    current = schemas()
    for name, schema in current.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: no snapshot committed")
        elif path.read_text() != render(schema):
            problems.append(f"{name}: contract changed since its snapshot")
    for path in sorted(directory.glob("*.json")):
        if path.name not in current:
            problems.append(f"{path.name}: snapshot of a contract that no longer exists")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args == ["write"]:
        for path in write():
            print(f"wrote {path}")
        return 0
    if args == ["check"]:
        problems = drift()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("contracts drifted from docs/schemas: review, then run 'make schemas'", file=sys.stderr)
        return 1 if problems else 0
    print("usage: python -m minicloud_shared.contracts.snapshot write|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
