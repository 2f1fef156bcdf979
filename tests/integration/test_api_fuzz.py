"""RELIABILITY.md S09: schemathesis generates requests from the gateway's OpenAPI
document — valid ones and invalid ones — for every operation, against the real gateway
process with the whole cloud behind it on a real Redis. No answer may be a 5xx, and
every answer must be what the document says (issue 10, item 12): a documented status
code, the documented content type, headers (Retry-After, Allow) and a body that
validates against the response's schema — 2xx bodies and the JSON error body alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks
from schemathesis.generation import GenerationMode

from tests.support.cloud import Cloud, host_body, local_cloud, settled

pytestmark = [pytest.mark.broker, pytest.mark.slow]
CONFORMANCE = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
EXAMPLES = 25  # per operation and mode: 37 operations x 2 modes, ~1,250 requests, ~20 s on 2 cores


@pytest.fixture
def cloud(redis_url: str) -> Iterator[Cloud]:
    with local_cloud(redis_url, MINICLOUD_RATE_LIMIT_PER_S="100000") as c:
        yield c


def test_s09_generated_requests_never_get_a_server_error(cloud: Cloud) -> None:
    with httpx.Client(base_url=cloud.endpoint, timeout=10) as client:
        op = cloud.op
        assert settled(client, client.post("/v1/hosts", json=host_body(1), headers=op), op)["status"] == "done"
        client.post("/v1/tenants", json={"tenant_id": "fuzz", "name": "Fuzz"}, headers=op)
        tenant = {"Authorization": f"Bearer {client.post('/v1/tenants/fuzz/keys', headers=op).json()['key']}"}
    schema = schemathesis.openapi.from_url(cloud.endpoint + "/openapi.json")
    failures: list[str] = []
    calls = {"n": 0}
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            auth = op if "operator" in (operation.tags or []) else tenant
            label = mode.value

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                r = case.call(headers={**(case.headers or {}), **auth})  # noqa: B023 (run before the next loop)
                calls["n"] += 1
                where = f"{case.method} {case.formatted_path} ({label})"  # noqa: B023
                if r.status_code >= 500:
                    failures.append(f"{where}: {r.status_code} {r.text[:200]}")
                    return
                if r.status_code >= 400 and not isinstance(r.json().get("error", {}).get("code"), str):
                    failures.append(f"{where}: {r.status_code} without the error shape: {r.text[:200]}")
                try:
                    case.validate_response(r, checks=CONFORMANCE)
                except (Exception, BaseExceptionGroup) as exc:  # what the document did not say
                    failures.append(f"{where}: {r.status_code}: {str(exc)[:400]}")

            try:
                check()
            except Exception as exc:  # a strategy that cannot generate (unsatisfiable negative data) is not a 5xx
                if "Unsatisfiable" not in type(exc).__name__ and "unsatisfiable" not in str(exc).lower():
                    raise
    print(f"S09: {calls['n']} requests over {len(operations)} operations, {len(failures)} failures")
    assert failures == [], "\n".join(failures[:20])
    assert calls["n"] >= 25 * EXAMPLES, f"only {calls['n']} requests were made"
