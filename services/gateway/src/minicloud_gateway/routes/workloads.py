"""Workloads: submit (with an ``Idempotency-Key``), get, list, complete, cancel."""

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from minicloud_gateway import identity
from minicloud_gateway import schemas as sc
from minicloud_gateway.deps import ID, TEXT, Gateway, IdPath, Int, State, Tenant
from minicloud_gateway.guard import ApiError
from minicloud_gateway.metrics import request_id
from minicloud_gateway.store import (
    account_key,
    invoice_key,
    invoices_key,
    read_doc,
    read_docs,
    request_digest,
    reservations_key,
    trail_key,
    workload_key,
    workloads_key,
)
from minicloud_shared.contracts import Payload, derived_event_id, encode, envelope_for, text
from minicloud_shared.contracts.agent import RunSpec
from minicloud_shared.contracts.scheduling import (
    CancelWorkload,
    CompleteWorkload,
    PriceClass,
    SubmitWorkload,
    WorkloadKind,
    shape_problem,
)
from minicloud_shared.contracts.topology import logs_stream
from minicloud_shared.runtime import publish
from minicloud_shared.skus import MIG_PROFILE

router = APIRouter(tags=["workloads"], responses=sc.AUTH)

# A submission's one write: the workload's document created at version 1 (unless it
# exists: then it is returned for the caller to compare), listed in the tenant's index,
# and the command appended to scheduling's stream — all or nothing, so a command is never
# published for a body the document does not hold. Returns {created, document}.
# The stream is an argument, not a declared key, as in the runtime's commit script: Redis
# checks a script's declared keys against one permission set, and the gateway's own keys
# and the command stream are in two (its own keys, and the selector that allows XADD
# there); the XADD inside is checked against the latter.
SUBMIT_LUA = """
local d = redis.call('HGET', KEYS[1], 'd')
if d then return {0, d} end
redis.call('HSET', KEYS[1], 'v', 1, 'd', ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
redis.call('XADD', ARGV[4], '*', unpack(ARGV, 5))
return {1, ARGV[1]}
"""


# An argument may hold tabs and newlines (a script given to -c); no other control
# character and no bidirectional override.
ARG = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*$"


class WorkloadIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=TEXT, examples=["llama-ft-7b"])
    kind: WorkloadKind = Field(examples=["fine_tuning"])
    sku: str | None = Field(None, pattern=ID, max_length=63, examples=["h100-80gb-sxm"])
    skus: list[Annotated[str, Field(pattern=ID, max_length=63)]] | None = Field(
        None,
        min_length=2,
        max_length=16,
        description="Acceptable GPU SKUs, instead of sku: it runs on whichever of them has room (a gang on one "
        "SKU for all its nodes) and is billed at that SKU's price",
        examples=[["h100-80gb-sxm", "h200-141gb-sxm"]],
    )
    gpus_per_node: Int = Field(
        ge=0, le=72, description="Whole GPUs on each node; 0 for a share of one GPU or CPU-only work", examples=[8]
    )
    nodes: Int = Field(1, ge=1, le=1024, examples=[2])
    gpu_milli: Int | None = Field(
        None,
        ge=1,
        le=999,
        description="With gpus_per_node 0: a time-sliced share of one GPU, in thousandths (250: a quarter), on a "
        "host whose GPUs are shared; billed at the SKU's price x the share",
        examples=[250],
    )
    mig_profile: str | None = Field(
        None,
        pattern=MIG_PROFILE,
        description="With gpus_per_node 0: a MIG slice of one GPU, by profile (1g.10gb … 7g.80gb on an H100 or "
        "A100, 1g.18gb … 7g.141gb on an H200), on a host whose GPUs are partitioned; billed at the SKU's price x "
        "its compute slices of 7",
        examples=["1g.10gb"],
    )
    cpu_milli: Int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="CPU on each node, thousandths of a vCPU (16000: 16 vCPU). Unset: the GPUs' proportional part "
        "of the host's. Required for CPU-only work (gpus_per_node 0, no gpu_milli)",
        examples=[16_000],
    )
    memory_mib: Int | None = Field(
        None,
        ge=1,
        le=1 << 30,
        description="Memory on each node, MiB. Unset: the GPUs' proportional part of the host's. Required for "
        "CPU-only work",
        examples=[65_536],
    )
    region: str | None = Field(None, pattern=ID, max_length=63, examples=["eu-1"])
    price_class: PriceClass = Field("on_demand", examples=["on_demand"])
    priority: Int = Field(100, ge=0, le=1000, examples=[100])
    max_duration_s: Int = Field(86_400, ge=60, le=90 * 86_400, examples=[3600])
    image: str | None = Field(
        None,
        max_length=255,
        description="What to run: a container image (with command). Without them the tenant runs the work and "
        "completes it",
        examples=["minicloud/workload:bookworm"],
    )
    command: list[Annotated[str, Field(max_length=4096, pattern=ARG)]] | None = Field(
        None,
        max_length=256,
        description="The command and its arguments (argv, no shell)",
        examples=[["python3", "-c", "print(1)"]],
    )
    env: dict[str, Annotated[str, Field(max_length=4096, pattern=TEXT)]] | None = Field(
        None, description="Environment variables (plain values: no secrets)", examples=[{"EPOCHS": "3"}]
    )
    port: Int | None = Field(
        None, ge=1, le=65535, description="The port an inference service listens on", examples=[8000]
    )

    def check_shape(self) -> None:
        """Whole GPUs, a share of one GPU, or CPU only — an ApiError for anything else."""
        problem = shape_problem(
            self.gpus_per_node, self.nodes, self.gpu_milli, self.cpu_milli, self.memory_mib, self.mig_profile
        )
        if problem:
            raise ApiError(422, "bad_shape", problem)

    def accepted(self) -> list[str] | None:
        """The SKUs it may run on (None: any); an ApiError for sku and skus both given."""
        if self.sku is not None and self.skus is not None:
            raise ApiError(422, "bad_sku", "give sku (one GPU model) or skus (any of several), not both")
        if self.skus is not None:
            return sorted(set(self.skus))
        return [self.sku] if self.sku is not None else None

    def run_spec(self) -> RunSpec | None:
        """What to run, checked; an ApiError for an incomplete or invalid one."""
        given = {k: v for k, v in (("image", self.image), ("command", self.command)) if v is not None}
        if not given:
            if self.env or self.port is not None:
                raise ApiError(422, "bad_run", "env and port need an image and a command to run")
            return None
        if len(given) < 2:
            missing = "command" if "image" in given else "image"
            raise ApiError(
                422, "bad_run", f"a workload that runs something needs both image and command: {missing} is missing"
            )
        try:
            return RunSpec.model_validate(
                {"image": self.image, "command": self.command, "env": self.env or {}, "port": self.port}
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ApiError(422, "bad_run", f"{where}: {first['msg']}".removeprefix("Value error, ")) from None


RUN_FIELDS = set(RunSpec.model_fields)  # image, command, env, port: flat in the API's body
# Fields added after the first release: left out of a body's digest while unset, so a
# retry of an older submission digests as it did.
LATER_FIELDS = RUN_FIELDS | {"skus", "gpu_milli", "cpu_milli", "memory_mib", "mig_profile"}


@router.post("/v1/workloads", status_code=202, response_model=sc.Accepted, responses=sc.errors(402, 409))
async def submit(
    body: WorkloadIn,
    who: Tenant,
    g: State,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128, pattern=TEXT)] = None,
) -> JSONResponse:
    """Submit a workload. The Idempotency-Key names it for good: the same key with the
    same body answers with the same workload (whatever became of it), with another
    body 409. Nothing is stored for a refused submission."""
    if idempotency_key is None:
        raise ApiError(400, "idempotency_key_required", "send an Idempotency-Key header: a retry with it is safe")
    workload_id = "wl-" + derived_event_id(who, "workload", idempotency_key)[:23]
    run = body.run_spec()
    body.check_shape()
    accepted = body.accepted()  # sku or skus, not both
    # A body without a run digests as it did before run fields existed.
    spec = {k: v for k, v in body.model_dump(mode="json").items() if v is not None or k not in LATER_FIELDS}
    digest = request_digest(spec)
    key = workload_key(who, workload_id)
    command = SubmitWorkload(
        workload_id=workload_id, client_command_id=idempotency_key, run=run, **body.model_dump(exclude=RUN_FIELDS)
    )
    envelope = envelope_for(
        command,
        producer="gateway",
        occurred_at=g.clock.now(),
        event_id=derived_event_id(who, "submit", idempotency_key),  # a retry is the same command
        tenant_id=who,
        correlation_id=request_id(),  # what the request's X-Request-Id answers
    )
    # One round trip for what admission reads, one for the write.
    pipe = g.redis.pipeline(transaction=False)
    for k, field in ((key, "d"), (account_key(who), "d"), (identity.tenant_key(who), "max_priority")):
        pipe.hget(k, field)
    pipe.hget(reservations_key(who), "d")
    found, account, ceiling, reserved = await pipe.execute()
    existing = None if found is None else json.loads(found)
    if existing is None:
        # Admission, before anything is stored: room in Redis, the tenant's budget and
        # priority ceiling and reservations, and a fleet that can hold the workload.
        await g.memory.check()
        _admit(g, body, account, ceiling, reserved)
        await g.shapes.check(accepted, body.region, body.gpus_per_node, body.nodes)
        submitted = {"workload_id": workload_id, "status": "submitted", **spec, "request_digest": digest}
        # Created as "submitted" and the command appended in one atomic step; the
        # projection's handlers take the document from there.
        fields = [x for kv in encode(envelope, command).items() for x in kv]
        created, doc = await g.submit_script(
            keys=[key, workloads_key(who)],
            args=[json.dumps(submitted), time.time(), workload_id, command.stream, *fields],
        )
        existing = json.loads(doc)
        if created:
            return _accepted(workload_id)
    if existing.get("request_digest", digest) != digest:
        raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different body")
    if existing.get("status") == "submitted":
        # A retry of a submission not yet accepted: the same command again (its id is a
        # function of the tenant and the key, so scheduling applies it once).
        entry: Any = encode(envelope, command)  # a dict[str, str]; redis-py types its mapping more widely
        await g.redis.xadd(command.stream, entry)
    return _accepted(workload_id)


def _accepted(workload_id: str) -> JSONResponse:
    return JSONResponse(
        {"workload_id": workload_id, "status": "submitted"},
        status_code=202,
        headers={"Location": f"/v1/workloads/{workload_id}"},
    )


def _admit(g: Gateway, body: WorkloadIn, account: Any, ceiling: Any, reserved: Any) -> None:
    """The tenant's side of admission, from the gateway's own records: a tenant its
    budget blocks is refused here (scheduling refuses it too, if this view lags)."""
    acct = None if account is None else json.loads(account)
    if acct is not None and acct.get("state") == "blocked":
        why = acct.get("cause") or "the budget is exhausted"
        raise ApiError(402, "budget", f"no new work is admitted: {why}")
    limit = identity.DEFAULT_MAX_PRIORITY if ceiling is None else int(ceiling)
    if body.priority > limit:
        raise ApiError(
            403, "priority_not_granted", f"priority {body.priority} is above this tenant's ceiling of {limit}"
        )
    if body.price_class == "reserved":
        _reservation_for(g, body, {"items": {}} if reserved is None else json.loads(reserved))


def _reservation_for(g: Gateway, body: WorkloadIn, doc: dict[str, Any]) -> None:
    """Reserved work needs a reservation in force that can hold it: an operator's grant
    for its SKU and region (scheduling keeps it within the reservation's GPUs)."""
    if body.sku is None or body.region is None:
        raise ApiError(422, "reservation_needs_place", "reserved work names the SKU and region of its reservation")
    now = g.clock.now()
    fits = [
        r
        for r in doc["items"].values()
        if (r["sku"], r["region"]) == (body.sku, body.region)
        and datetime.fromisoformat(r["starts_at"]) <= now < datetime.fromisoformat(r["ends_at"])
    ]
    reserved = sum(int(r["gpus"]) for r in fits)
    if reserved < max(body.gpus_per_node * body.nodes, 1 if body.gpu_milli or body.mig_profile else 0):
        held = f"holds {reserved} reserved GPUs" if reserved else "holds no reservation in force"
        raise ApiError(
            403,
            "no_reservation",
            f"price class reserved needs an operator's reservation: this tenant {held} of "
            f"{body.sku} in {body.region}; submit it as on_demand or spot",
        )


async def _workload(g: Gateway, who: str, workload_id: str) -> dict[str, Any]:
    doc = await read_doc(g.redis, workload_key(who, workload_id))
    if doc is None:
        raise ApiError(404, "not_found", f"no workload {workload_id}")
    return doc


@router.get("/v1/workloads/{workload_id}", response_model=sc.WorkloadView, responses=sc.errors(404))
async def get_workload(workload_id: IdPath, who: Tenant, g: State) -> dict[str, Any]:
    return await _workload(g, who, workload_id)  # the closed WorkloadView drops the request's digest


@router.get("/v1/workloads/{workload_id}/trace", response_model=sc.WorkloadTrace, responses=sc.errors(404))
async def trace_workload(workload_id: IdPath, who: Tenant, g: State) -> dict[str, Any]:
    """From the request that submitted the workload to its invoice line: every fact
    the services published about it, with the request id (``X-Request-Id``) they carry
    and what triggered each, and the invoice lines its allocations are on."""
    doc = await _workload(g, who, workload_id)
    raw: Any = await g.redis.hgetall(trail_key(who, workload_id))
    steps = sorted((json.loads(v) for v in raw.values()), key=lambda s: (s["at"], s["type"]))
    submitted = next((s for s in steps if s["type"].endswith("workload_accepted")), None)
    allocations = {s["allocation_id"] for s in steps if s.get("allocation_id")}
    if isinstance(doc.get("allocation"), dict):
        allocations.add(doc["allocation"]["allocation_id"])
    lines = []
    # Only invoices from the month of its first fact on: its usage cannot be billed earlier.
    since = int(steps[0]["at"][:7].replace("-", "")) if steps else "+inf"
    months: list[Any] = await g.redis.zrangebyscore(invoices_key(who), since, "+inf")
    for inv in await read_docs(g.redis, [invoice_key(who, text(m)) for m in months]):
        for line in (inv or {}).get("lines", []):
            for a in line.get("allocations", []):
                if a["allocation_id"] in allocations:
                    lines.append(
                        {
                            "month": (inv or {})["month"],
                            "line_id": line["line_id"],
                            "description": line["description"],
                            "gpu_seconds": a["gpu_seconds"],
                        }
                    )
    return {
        "workload_id": workload_id,
        "correlation_id": submitted["correlation_id"] if submitted else None,
        "steps": steps,
        "invoice_lines": lines,
    }


@router.get("/v1/workloads", response_model=sc.Workloads)
async def list_workloads(
    who: Tenant,
    g: State,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after: Annotated[str | None, Query(pattern=ID, max_length=63)] = None,
) -> dict[str, Any]:
    index = workloads_key(who)
    rank: Any = await g.redis.zrank(index, after) if after else None
    start = 0 if rank is None else int(rank) + 1
    # One page of ids (one more, to know whether there is a next page), then their
    # documents in one round trip.
    ids: list[Any] = await g.redis.zrange(index, start, start + limit)
    names = [text(i) for i in ids]
    page, more = names[:limit], len(names) > limit
    docs = await read_docs(g.redis, [workload_key(who, w) for w in page])
    items = [d for d in docs if d is not None]
    return {"items": items, "next": page[-1] if more and page else None}


async def _end(g: Gateway, command: Payload, who: str, workload_id: str) -> JSONResponse:
    await _workload(g, who, workload_id)  # 404 for unknown and other tenants' workloads alike
    await publish(g.redis, command, producer="gateway", tenant_id=who, clock=g.clock, correlation_id=request_id())
    return JSONResponse({"workload_id": workload_id, "status": "requested"}, status_code=202)


@router.post(
    "/v1/workloads/{workload_id}/complete", status_code=202, response_model=sc.Accepted, responses=sc.errors(404)
)
async def complete(workload_id: IdPath, who: Tenant, g: State) -> JSONResponse:
    return await _end(g, CompleteWorkload(workload_id=workload_id), who, workload_id)


@router.post(
    "/v1/workloads/{workload_id}/cancel", status_code=202, response_model=sc.Accepted, responses=sc.errors(404)
)
async def cancel(workload_id: IdPath, who: Tenant, g: State) -> JSONResponse:
    return await _end(g, CancelWorkload(workload_id=workload_id), who, workload_id)


LOG_CURSOR = r"^\d{1,20}(-\d{1,20})?$"
FOLLOW_LIMIT = 200  # log followers one gateway serves at once (each holds a blocked Redis read)
FOLLOW_MAX_S = 3600.0  # a follow ends after this long; the client reconnects with since=
_following = 0


def _line(entry_id: Any, fields: dict[Any, Any]) -> dict[str, Any]:
    f = {text(k): text(v) for k, v in fields.items()}
    return {
        "id": text(entry_id),
        "t": f.get("t", ""),
        "rank": int(f.get("r", 0)),
        "stream": f.get("s", "stdout"),
        "line": f.get("l", ""),
    }


def _over(doc: dict[str, Any]) -> bool:
    return doc.get("status") in ("ended", "rejected")


@router.get(
    "/v1/workloads/{workload_id}/logs",
    response_model=sc.Logs,
    responses={
        **sc.errors(404, 503),
        200: {
            "description": "The lines (JSON); with follow=true a text/event-stream: one `line` event per line "
            "(its id is the line's position), then an `end` event once the workload has ended",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def workload_logs(
    workload_id: IdPath,
    who: Tenant,
    g: State,
    since: Annotated[
        str, Query(pattern=LOG_CURSOR, description="Lines after this position ('0': from the start)")
    ] = "0",
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    follow: bool = False,
) -> Any:
    """The output of a workload's processes (stdout and stderr of every node, with
    time and rank), while it runs and after. A log keeps about its last 5,000 lines and
    is deleted 7 days after its last line. Only the workload's tenant can read it."""
    doc = await _workload(g, who, workload_id)  # 404 for unknown and other tenants' workloads alike
    stream = logs_stream(workload_id)
    if not follow:
        rows: Any = await g.redis.xrange(stream, min="-" if since == "0" else f"({since}", count=limit)
        lines = [_line(i, f) for i, f in rows]
        return {"lines": lines, "next": lines[-1]["id"] if lines else since, "ended": _over(doc)}
    if _following >= FOLLOW_LIMIT:
        raise ApiError(503, "busy", "too many logs are followed right now: read without follow, or try again")
    return StreamingResponse(
        _follow(g, who, workload_id, stream, since),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


async def _follow(g: Gateway, who: str, workload_id: str, stream: str, since: str) -> AsyncIterator[str]:
    global _following
    _following += 1  # counted while the stream is served (a client gone before it starts is not)
    cursor = since
    started = time.monotonic()
    try:
        quiet = 0
        while time.monotonic() - started < FOLLOW_MAX_S:
            found: Any = await g.redis.xread({stream: cursor}, count=500, block=1000)
            rows = found[0][1] if found else []
            for entry_id, fields in rows:
                line = _line(entry_id, fields)
                cursor = line["id"]
                yield f"id: {cursor}\nevent: line\ndata: {json.dumps(line)}\n\n"
            if rows:
                quiet = 0
                continue
            quiet += 1
            doc = await read_doc(g.redis, workload_key(who, workload_id))
            if doc is None or _over(doc):
                # The last lines of an ended workload are shipped within a second or two.
                if quiet >= 3:
                    end = {"status": (doc or {}).get("status"), "outcome": (doc or {}).get("outcome"), "next": cursor}
                    yield f"event: end\ndata: {json.dumps(end)}\n\n"
                    return
            elif quiet % 15 == 0:
                yield ": still running\n\n"
    finally:
        _following -= 1


ROUTERS = [router]
