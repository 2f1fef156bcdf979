"""Which queued workload is considered first, and which waiting workload holds back
which. Pure: no I/O (docs/scheduling.md, "Order and fairness").

**Order.** Workloads are taken by band — price class (reserved, on-demand, spot), then
priority — and within a band by *fair share*: a workload's key is the GPUs its tenant
holds now plus the GPUs of that tenant's workloads queued ahead of it; ties go to the
earlier submission. A tenant with a long queue therefore takes turns with the others
instead of going first with all of it: its third 8-GPU job comes after another
tenant's first, whatever the submission times (equal shares, in the spirit of Kueue's
fair sharing and Slurm's fair-share factor; weights per tenant would be the next step).

**Heads.** A workload that waits for capacity or topology becomes the head of its pool
(its SKU, in its region or in any) and holds back work that competes for the same GPUs:
work of the same SKU in an overlapping region, and work that takes any SKU in an
overlapping region. It never holds back another pool's or another region's work, and a
workload the fleet cannot hold at all (``no_such_capacity``, ``too_large``), or that
waits for its own tenant's quota, reservation or budget, is never a head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

BAND = 2**41  # queue_score's unit of (class rank, priority): what remains is time
NOT_HEADS = frozenset({"quota", "budget", "reservation", "no_such_capacity", "too_large"})


class Queued(Protocol):
    @property
    def workload_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def sku(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def gpus(self) -> int: ...
    @property
    def accepts(self) -> frozenset[str] | None: ...


W = TypeVar("W", bound=Queued)


def fair_order(queued: Iterable[W], score: Mapping[str, float], held: Mapping[str, int]) -> list[W]:
    """``queued`` in the order a placement pass considers them; ``score`` is each one's
    queue score (band and submission time), ``held`` each tenant's GPUs in use."""
    ahead: dict[str, int] = {}
    keyed: list[tuple[int, int, float, str, W]] = []
    for wl in sorted(queued, key=lambda w: (score[w.workload_id], w.workload_id)):
        s = score[wl.workload_id]
        share = held.get(wl.tenant_id, 0) + ahead.get(wl.tenant_id, 0)
        ahead[wl.tenant_id] = ahead.get(wl.tenant_id, 0) + wl.gpus
        keyed.append((int(s // BAND), share, s, wl.workload_id, wl))
    return [k[-1] for k in sorted(keyed, key=lambda k: k[:4])]


def competes(head: Queued, wl: Queued) -> bool:
    """Whether waiting ``head`` holds back ``wl``: both could take the same GPUs — ``wl``
    takes any SKU, or a SKU the head waits for (a head that takes any SKU holds back
    only work that does too)."""
    regions = head.region is None or wl.region is None or head.region == wl.region
    if not regions:
        return False
    mine, theirs = wl.accepts, head.accepts
    return mine is None or (theirs is not None and not mine.isdisjoint(theirs))


def can_head(code: str) -> bool:
    """Whether a workload that waits for this reason holds back others."""
    return code not in NOT_HEADS
