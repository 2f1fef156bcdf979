"""An operator's command: published on the owning service's stream and answered 202
with an operation the caller can follow (``/v1/operations/{id}``: pending, then done
or rejected with the owner's reason)."""

from fastapi.responses import JSONResponse

from minicloud_gateway import schemas as sc
from minicloud_gateway.deps import Gateway
from minicloud_gateway.guard import ApiError
from minicloud_gateway.metrics import request_id
from minicloud_gateway.store import create_doc, op_key, read_doc, request_digest
from minicloud_shared.contracts import Payload, derived_event_id, new_event_id
from minicloud_shared.runtime import publish


async def command(
    g: Gateway, payload: Payload, what: str, idempotency_key: str | None, target: str, tenant_id: str | None = None
) -> JSONResponse:
    """Publish an operator's command. An Idempotency-Key is scoped to the command and
    its target (a host, a tenant): the same key and body answer with the operation as
    it stands (the command is applied once); a different body with it is refused, for
    as long as the operation is kept. The same key for another target is another
    operation."""
    body = {"t": payload.event_type, **payload.model_dump(mode="json")}
    digest = request_digest(body)
    if idempotency_key is not None:
        event_id = derived_event_id("operator", payload.event_type, target, idempotency_key)
    else:
        event_id = new_event_id()
    current = await read_doc(g.redis, op_key(event_id))
    if current is None:
        await g.memory.check()
        pending = {
            "operation_id": event_id,
            "status": "pending",
            "command": payload.event_type,
            "what": what,
            "request_digest": digest,
        }
        current = await create_doc(g.redis, op_key(event_id), pending)
    if current.get("request_digest", digest) != digest:
        raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different body")
    if current["status"] == "pending":
        await publish(
            g.redis,
            payload,
            producer="gateway",
            tenant_id=tenant_id,
            event_id=event_id,
            clock=g.clock,
            correlation_id=request_id(),
        )
    view = sc.Operation.model_validate(current).model_dump(mode="json", exclude_none=True)
    return JSONResponse(view, status_code=202, headers={"Location": f"/v1/operations/{event_id}"})
