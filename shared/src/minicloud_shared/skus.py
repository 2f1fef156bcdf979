"""The GPU SKU catalog, read from data (``data/skus.json``), never hard-coded."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field

MIG_COMPUTE = 7  # compute slices of a MIG-capable GPU
MIG_PROFILE = r"^[1-7]g\.[0-9]{1,4}gb$"  # a MIG profile's name, e.g. 1g.10gb (contracts and the API check it)
MIG_MEMORY = 8  # memory slots


class MigProfile(BaseModel):
    """A MIG slice a GPU can be partitioned into (NVIDIA's MIG user guide)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: str = Field(description="Its name", examples=["1g.10gb"], pattern=MIG_PROFILE)
    compute: int = Field(description="Compute slices, of 7", examples=[1], ge=1, le=MIG_COMPUTE)
    memory_slots: int = Field(description="Memory slots, of 8", examples=[1], ge=1, le=MIG_MEMORY)
    starts: list[int] = Field(description="The memory slots it may start at", examples=[[0, 1, 2, 3, 4, 5, 6]])

    @property
    def billed_milli(self) -> int:
        """The thousandths of its GPU a slice is billed as: its compute slices of 7,
        rounded to the thousandth (1g: 143, 2g: 286, 3g: 429, 4g: 571, 7g: 1000)."""
        return (2000 * self.compute + MIG_COMPUTE) // (2 * MIG_COMPUTE)


class Sku(BaseModel):
    """A GPU model minicloud sells."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: str = Field(description="Stable SKU id", examples=["h100-80gb-sxm"], pattern=r"^[a-z0-9\-]+$")
    name: str = Field(description="Marketing name", examples=["NVIDIA H100 80GB SXM5"])
    memory_gb: int = Field(description="GPU memory, GB", examples=[80], gt=0)
    bf16_tflops: Decimal = Field(description="Peak dense BF16 tensor TFLOPS", examples=["989"], gt=0)
    interconnect: str = Field(description="How GPUs of a host talk", examples=["NVLink 4 + NVSwitch"])
    nvlink_gbps: int = Field(description="Per-GPU NVLink bandwidth, GB/s (0: PCIe only)", examples=[900], ge=0)
    mig: list[MigProfile] = Field(default_factory=list, description="MIG profiles (none: not MIG-capable)")

    def mig_profile(self, name: str) -> MigProfile | None:
        return next((p for p in self.mig if p.profile == name), None)


def _fits(profiles: list[MigProfile], used: list[bool]) -> bool:
    """Whether ``profiles`` can all be placed in the free memory slots of ``used``."""
    if not profiles:
        return True
    first, rest = profiles[0], profiles[1:]
    for start in first.starts:
        end = start + first.memory_slots
        if end <= MIG_MEMORY and not any(used[start:end]):
            used[start:end] = [True] * first.memory_slots
            if _fits(rest, used):
                used[start:end] = [False] * first.memory_slots
                return True
            used[start:end] = [False] * first.memory_slots
    return False


def mig_layout_problem(sku: Sku, layout: list[str]) -> str | None:
    """What is wrong with partitioning a GPU of ``sku`` into ``layout`` (its slices), in
    words; None: it is a valid partition. Slices must be profiles of the SKU, use at most
    7 compute slices, and fit the 8 memory slots at the starts each profile allows (a
    search over the starts: at most 7 slices of at most 7 starts each)."""
    if not sku.mig:
        return f"{sku.sku} GPUs cannot be partitioned (MIG)"
    if not layout:
        return "a MIG layout names at least one slice"
    profiles = []
    for name in layout:
        p = sku.mig_profile(name)
        if p is None:
            return f"{sku.sku} has no MIG profile {name!r}; it has {', '.join(x.profile for x in sku.mig)}"
        profiles.append(p)
    compute = sum(p.compute for p in profiles)
    if compute > MIG_COMPUTE:
        return f"the slices use {compute} compute slices; a GPU has {MIG_COMPUTE}"
    if not _fits(sorted(profiles, key=lambda x: -x.memory_slots), [False] * MIG_MEMORY):
        return "the slices do not fit together in the GPU's memory slots (each profile starts only where MIG allows)"
    return None


@cache
def skus() -> dict[str, Sku]:
    raw = json.loads(resources.files("minicloud_shared.data").joinpath("skus.json").read_text())
    return {s["sku"]: Sku.model_validate(s) for s in raw["skus"]}
