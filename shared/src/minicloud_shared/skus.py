"""The GPU SKU catalog, read from data (``data/skus.json``), never hard-coded."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field


class Sku(BaseModel):
    """A GPU model minicloud sells."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: str = Field(description="Stable SKU id", examples=["h100-80gb-sxm"], pattern=r"^[a-z0-9\-]+$")
    name: str = Field(description="Marketing name", examples=["NVIDIA H100 80GB SXM5"])
    memory_gb: int = Field(description="GPU memory, GB", examples=[80], gt=0)
    bf16_tflops: Decimal = Field(description="Peak dense BF16 tensor TFLOPS", examples=["989"], gt=0)
    interconnect: str = Field(description="How GPUs of a host talk", examples=["NVLink 4 + NVSwitch"])
    nvlink_gbps: int = Field(description="Per-GPU NVLink bandwidth, GB/s (0: PCIe only)", examples=[900], ge=0)


@cache
def skus() -> dict[str, Sku]:
    raw = json.loads(resources.files("minicloud_shared.data").joinpath("skus.json").read_text())
    return {s["sku"]: Sku.model_validate(s) for s in raw["skus"]}
