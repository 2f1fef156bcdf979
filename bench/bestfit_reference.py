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


@dataclass
class ShareBestFit:
    """The simplest indexed best fit for GPU shares: every GPU in a bucket by its free
    thousandths (1000: whole and free); a share of m takes a GPU of the smallest
    non-empty bucket at or above m. No CPU, memory, SKU or region."""

    free: dict[tuple[str, int], int] = field(default_factory=dict)
    buckets: list[dict[tuple[str, int], None]] = field(default_factory=lambda: [{} for _ in range(1001)])

    def add(self, gpu: tuple[str, int], free: int) -> None:
        self.free[gpu] = free
        if free:
            self.buckets[free][gpu] = None

    def find(self, milli: int) -> tuple[str, int] | None:
        for n in range(milli, 1001):
            bucket = self.buckets[n]
            if bucket:
                return next(iter(bucket))
        return None

    def _move(self, gpu: tuple[str, int], delta: int) -> None:
        before = self.free[gpu]
        if before:
            del self.buckets[before][gpu]
        self.free[gpu] = before + delta
        if before + delta:
            self.buckets[before + delta][gpu] = None

    def claim(self, gpu: tuple[str, int], milli: int) -> None:
        self._move(gpu, -milli)

    def release(self, gpu: tuple[str, int], milli: int) -> None:
        self._move(gpu, milli)
