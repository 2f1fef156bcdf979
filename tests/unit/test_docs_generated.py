"""The committed schema snapshots and AsyncAPI document match the code."""

from __future__ import annotations

import json
from pathlib import Path

from minicloud_shared import asyncapi
from minicloud_shared.contracts import snapshot
from minicloud_shared.runtime import ServiceRuntime
from minicloud_shared.settings import Settings
from tests.support.events import TEST_STREAM, Tick
from tests.support.harness import handle_tick

ROOT = Path(__file__).resolve().parents[2]


def test_schema_snapshots_have_not_drifted() -> None:
    assert snapshot.drift() == [], "run 'make schemas' and review the diff"


def test_asyncapi_document_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    assert committed == json.loads(json.dumps(asyncapi.document(asyncapi.runtimes()), sort_keys=True)), (
        "run 'make docs' and review the diff"
    )


def test_asyncapi_describes_a_subscription_with_its_payload_schema() -> None:
    runtime = ServiceRuntime("testsvc", Settings(service="testsvc", consumer_name="testsvc-x"))
    runtime.add_route(Tick, handle_tick)
    doc = asyncapi.document([runtime])
    channel = doc["channels"][f"{TEST_STREAM}:testsvc"]
    assert channel["bindings"]["redis"]["groupName"] == "testsvc"
    message = doc["components"]["messages"][f"{TEST_STREAM}:testsvc:SubscribeMessage"]
    data = message["payload"]["properties"]["data"]
    assert data["contentSchema"] == {"oneOf": [{"$ref": "#/components/schemas/minicloud_test_tick"}]}
    assert message["payload"]["properties"]["type"]["enum"] == ["minicloud.test.tick"]
    assert doc["components"]["schemas"]["minicloud_test_tick"]["properties"]["n"]["description"] == "Sequence number"


def test_openapi_document_is_current() -> None:
    from minicloud_gateway import openapi

    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert committed == openapi.render(), "docs/openapi.json is stale: run `make docs`"
    paths = json.loads(committed)["paths"]
    assert "/v1/workloads" in paths
    assert "/readyz" in paths
