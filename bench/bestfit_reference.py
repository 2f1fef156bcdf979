"""The reference the placement benchmark divides by: the simplest indexed best-fit a
scheduler could have, written for the benchmark (issue: GPU sharing, "Speed").

Per SKU, hosts sit in buckets by their free GPU count; a one-host request of g GPUs
takes any host of the smallest non-empty bucket at or above g (best fit), and a
refusal looks at no more buckets than a host has GPUs. No topology, no tie-break, no
explanation of a refusal: what minicloud's engine does beyond this is what the ratio
prices."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BestFit:
    size: int = 8
    free: dict[str, set[int]] = field(default_factory=dict)  # host -> free GPU indices
    buckets: list[dict[str, None]] = field(default_factory=list)  # free count -> hosts (insertion-ordered)

    def __post_init__(self) -> None:
        self.buckets = [{} for _ in range(self.size + 1)]

    def add(self, host_id: str, free: set[int]) -> None:
        self.free[host_id] = set(free)
        self.buckets[len(free)][host_id] = None

    def find(self, g: int) -> tuple[str, tuple[int, ...]] | None:
        for n in range(g, self.size + 1):
            bucket = self.buckets[n]
            if bucket:
                host_id = next(iter(bucket))
                return host_id, tuple(sorted(self.free[host_id])[:g])
        return None

    def _move(self, host_id: str, change: set[int], claim: bool) -> None:
        free = self.free[host_id]
        del self.buckets[len(free)][host_id]
        if claim:
            free -= change
        else:
            free |= change
        self.buckets[len(free)][host_id] = None

    def claim(self, host_id: str, gpus: tuple[int, ...]) -> None:
        self._move(host_id, set(gpus), claim=True)

    def release(self, host_id: str, gpus: tuple[int, ...]) -> None:
        self._move(host_id, set(gpus), claim=False)
