"""How an operator's command ended (``commands.command`` starts one)."""

from typing import Annotated, Any

from fastapi import APIRouter, Path

from minicloud_gateway import schemas as sc
from minicloud_gateway.deps import Operator, State
from minicloud_gateway.guard import ApiError
from minicloud_gateway.store import op_key, read_doc

router = APIRouter(tags=["operator"], responses=sc.AUTH)


@router.get("/v1/operations/{operation_id}", response_model=sc.Operation, responses=sc.errors(404))
async def operation(operation_id: Annotated[str, Path(max_length=64)], _: Operator, g: State) -> dict[str, Any]:
    """How an operator's command ended: pending, done, rejected (the owner refused it)
    or failed (it could not be applied), with the reason."""
    doc = await read_doc(g.redis, op_key(operation_id))
    if doc is None:
        raise ApiError(404, "not_found", f"no operation {operation_id}")
    return {k: v for k, v in doc.items() if k != "request_digest"}


ROUTERS = [router]
