"""The commit plan: everything one batch's commit checks and writes, as the commit
script (``commit.lua``) reads it, field by field."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any


@dataclass(slots=True)
class CommitPlan:
    stream: str  # the source stream
    group: str  # the consumer group on it
    pending: list[str]  # entry ids that must still be pending in (stream, group), sorted
    dedup_prefix: str  # dedup_prefix + event id is a dedup key
    dedup: list[str]  # event ids whose dedup keys must not exist; set when the plan applies
    dedup_entries: list[str]  # the entry ids of ``dedup``, position for position
    dedup_ttl_s: int
    checks: list[list[Any]]  # [[key, expected version], ...] aggregates read or written
    writes: list[list[Any]]  # ["put", key, version, json] | ["hincrby", key, field, n] | ...
    appends: list[list[Any]]  # [[stream, [field, value, ...]], ...] entries to XADD
    ack: list[str]  # entry ids to XACK in (stream, group)
    skip_ack: bool = False  # fault injection: "crash after the effect, before the ack"

    def to_json(self) -> str:
        # Not dataclasses.asdict: it deep-copies every nested list (the writes and the
        # appends), which costs more than the encoding itself.
        return json.dumps({f: getattr(self, f) for f in _FIELDS}, separators=(",", ":"))

    def declared_keys(self) -> list[str]:
        """The keys a commit declares: what the service writes and reads of its own.
        The source stream is left out: a service's ACL user may touch another's stream
        only with the group commands (a Redis selector), and a script's declared keys
        must all pass one selector; the script's XPENDING/XACK on it are checked one by
        one. The dedup keys are derived by the script from ``dedup_prefix``."""
        keys: dict[str, None] = {}
        for k, _ in self.checks:
            keys[k] = None
        for op in self.writes:
            keys[op[1]] = None
            if op[0] == "srem_unchanged":
                for guard in op[3::2]:  # read by the script: declared like any key it touches
                    keys[guard] = None
        for stream, _ in self.appends:
            keys[stream] = None
        return list(keys)

    @property
    def read_keys(self) -> set[str]:
        return {k for k, _ in self.checks}

    @property
    def written_keys(self) -> set[str]:
        return {op[1] for op in self.writes}


_FIELDS = tuple(f.name for f in fields(CommitPlan))


def coalesce_increments(ops: list[list[Any]]) -> list[list[Any]]:
    """Sum increments of the same hash field: the batch commits as one, so a hundred
    ``HINCRBY k f 1`` and one ``HINCRBY k f 100`` cannot be told apart. Keys that other
    operations also touch keep their operations as they are, in order."""
    mixed = {op[1] for op in ops if op[0] != "hincrby"}
    out: list[list[Any]] = []
    sums: dict[tuple[str, str], list[Any]] = {}
    for op in ops:
        if op[0] != "hincrby" or op[1] in mixed:
            out.append(op)
            continue
        existing = sums.get((op[1], op[2]))
        if existing is None:
            merged = list(op)
            sums[(op[1], op[2])] = merged
            out.append(merged)
        else:
            existing[3] = str(int(existing[3]) + int(op[3]))
    return out
