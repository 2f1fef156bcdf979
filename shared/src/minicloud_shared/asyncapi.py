"""The AsyncAPI document of the whole cloud, generated from the services' apps.

    python -m minicloud_shared.asyncapi docs/asyncapi.json     # make docs

Each service's app module (``minicloud_<service>.app``, by convention) registers its
handlers on a runtime; the runtime builds the FastStream broker with its subscribers
and publishers, and FastStream renders them as AsyncAPI 3.0. The runtime decodes
entries itself (plain stream fields, see docs/schemas/envelope.json), so FastStream
cannot see payload types: this module fills each channel's message with the real
shape — the stream entry's fields, with ``data`` described by the payload schemas of
the event types that channel carries.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI

from minicloud_shared import __version__
from minicloud_shared.contracts import catalog
from minicloud_shared.contracts.envelope import Payload
from minicloud_shared.contracts.snapshot import WIRE_FIELDS
from minicloud_shared.contracts.topology import AGENT, SERVICES, STREAMS
from minicloud_shared.runtime.service import ServiceRuntime
from minicloud_shared.settings import Settings

DESCRIPTION = (
    "minicloud's services and the Redis Streams they exchange events over. Every entry is a flat map of "
    "string fields (CloudEvents attribute names); `data` holds the payload as JSON. Each consuming service "
    "reads through its own consumer group; each (stream, group) has a dead-letter stream <stream>.dlq.<group>."
)


def runtimes(services: tuple[str, ...] = (*SERVICES, AGENT)) -> list[ServiceRuntime]:
    """The services' runtimes as built, and a host agent's (for a placeholder host,
    ``host_id``: each agent reads ``mc.scheduling.tasks.<its host>``)."""
    out = []
    for service in services:
        app = importlib.import_module(f"minicloud_{service}.app")
        settings = Settings(service=service, redis_url="redis://redis:6379/0", consumer_name=f"{service}-<instance>")
        runtime = ServiceRuntime(service, settings)
        app.build(runtime)
        out.append(runtime)
    return out


def entry_schema(types: list[type[Payload]], refs: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "string", "contentMediaType": "application/json"}
    if types:
        data["contentSchema"] = {"oneOf": [{"$ref": refs[t.event_type]} for t in types]}
    props: dict[str, Any] = {name: {"type": "string", "description": what} for name, what in WIRE_FIELDS.items()}
    props["data"] = data | {"description": WIRE_FIELDS["data"]}
    if types:
        props["type"] = props["type"] | {"enum": sorted(t.event_type for t in types)}
    return {
        "type": "object",
        "description": "A stream entry: string fields only.",
        "properties": props,
        "required": ["specversion", "id", "type", "source", "time", "correlationid", "data"],
    }


def document(rts: list[ServiceRuntime]) -> dict[str, Any]:
    types = catalog.contract_types()
    for rt in rts:
        types.update({t: r.payload_type for sub in rt.subscriptions for t, r in sub.routes.items()})
    spec: dict[str, Any] = (
        AsyncAPI(*(rt.build() for rt in rts), title="minicloud", version=__version__, description=DESCRIPTION)
        .to_specification()
        .to_jsonable()
    )
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    refs: dict[str, str] = {}
    for event_type, cls in sorted(types.items()):
        name = event_type.replace(".", "_")
        schema = cls.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas[def_name] = definition
        schemas[name] = schema
        refs[event_type] = f"#/components/schemas/{name}"
    messages = components.setdefault("messages", {})
    for rt in rts:
        for sub in rt.subscriptions:
            key = f"{sub.stream}:{sub.group}:SubscribeMessage"
            if key in messages:
                handled = [r.payload_type for r in sub.routes.values()]
                messages[key]["payload"] = entry_schema(handled, refs)
                messages[key]["correlationId"] = {"location": "$message.payload#/correlationid"}
    for key, message in messages.items():
        stream = key.rsplit(":", 2)[0]
        if key.endswith(":Message") and stream in STREAMS:  # a publisher: what the stream carries
            carried = [t for t in types.values() if t.stream == stream]
            message["payload"] = entry_schema(carried, refs)
            message["correlationId"] = {"location": "$message.payload#/correlationid"}
    # FastStream's placeholders for the payloads replaced above.
    for name in [n for n in schemas if n == "EmptyPayload" or n.endswith(":Payload")]:
        del schemas[name]
    return spec


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    out = Path(args[0]) if args else Path("docs/asyncapi.json")
    spec = document(runtimes())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    channels = spec.get("channels", {})
    print(f"wrote {out}: {len(channels)} channel(s), {len(spec['components'].get('schemas', {}))} schema(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
