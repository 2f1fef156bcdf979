"""What GPUs a host has: from NVML on a GPU host, or from configuration elsewhere.

Both paths produce the same :class:`HostGpus`, so everything after discovery is one
code path. NVML is reached through a module object with ``pynvml``'s names (the
``nvidia-ml-py`` package); tests pass a fake built from a real host's recording
(``tests/fixtures/nvml``).

Health becomes inventory's fault codes: a GPU that has fallen off the bus
(``GpuIsLost``, Xid 79) → ``xid-79``; uncorrected volatile ECC errors → ``ecc-dbe``;
a row-remapping failure → ``row-remap-failure``; a critical Xid event → ``xid-<n>``.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

from minicloud_shared.skus import skus

# NVML's product name → the catalog's SKU. Memory tells the 40 and 80 GB A100s (and
# the H100 PCIe from SXM) apart where the name does not.
SKU_BY_NAME: tuple[tuple[str, int | None, str], ...] = (
    # (name pattern, minimum memory MiB or None, SKU)
    (r"^NVIDIA H200", None, "h200-141gb-sxm"),
    (r"^NVIDIA H800", None, "h800-80gb-sxm"),
    (r"^NVIDIA H100 80GB HBM3", None, "h100-80gb-sxm"),  # the SXM5 part (PCIe is not sold)
    (r"^NVIDIA A800", None, "a800-80gb-sxm"),
    (r"^NVIDIA A100", 70_000, "a100-80gb-sxm"),
    (r"^NVIDIA L40S", None, "l40s-48gb-pcie"),
    (r"^NVIDIA A10$", None, "a10-24gb-pcie"),
)


class DiscoveryError(Exception):
    """Discovery cannot give an answer an operator could act on (one line, no traceback)."""


def sku_for(name: str, memory_mib: int) -> str | None:
    for pattern, min_mib, sku in SKU_BY_NAME:
        if re.search(pattern, name) and (min_mib is None or memory_mib >= min_mib):
            return sku
    return None


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    uuid: str
    name: str
    sku: str
    memory_mib: int
    nvlink_peers: tuple[str, ...] = ()  # PCI bus ids of the GPUs its active links reach
    fault: str | None = None  # an inventory fault code, or None when healthy
    fault_detail: str = ""
    mig: tuple[tuple[str, str], ...] = ()  # MIG mode on: its MIG devices as (profile, UUID), in NVML's order


@dataclass(frozen=True, slots=True)
class HostGpus:
    source: str  # "nvml" or "config"
    gpus: tuple[Gpu, ...]
    driver: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def sku(self) -> str:
        skus = {g.sku for g in self.gpus}
        if len(skus) != 1:
            raise DiscoveryError(f"a host has one GPU SKU; found {', '.join(sorted(skus)) or 'no GPUs'}")
        return skus.pop()

    def render(self) -> str:
        lines = [f"{len(self.gpus)} GPU(s) from {self.source}" + (f", driver {self.driver}" if self.driver else "")]
        for g in self.gpus:
            health = "healthy" if g.fault is None else f"FAULT {g.fault} ({g.fault_detail})"
            links = f", NVLink to {len(g.nvlink_peers)} GPU(s)" if g.nvlink_peers else ", no NVLink peers"
            lines.append(f"  gpu{g.index}: {g.name} ({g.sku}), {g.memory_mib} MiB, {g.uuid}{links}, {health}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


_CONFIG = re.compile(r"^\s*(\d+)\s*[xX×]\s*([a-z0-9][a-z0-9\-.]*)\s*$")


def from_config(spec: str, host_id: str, known_skus: set[str] | None = None) -> HostGpus:
    """GPUs from configuration, e.g. ``8 x h100-80gb-sxm`` (no GPU on this machine).

    Their UUIDs are derived from the host id, stable across restarts."""
    m = _CONFIG.match(spec)
    if m is None:
        raise DiscoveryError(f"GPUs must look like '8 x h100-80gb-sxm', not {spec!r}")
    count, sku = int(m.group(1)), m.group(2)
    if not 1 <= count <= 72:
        raise DiscoveryError(f"a host has 1 to 72 GPUs, not {count}")
    if known_skus is not None and sku not in known_skus:
        raise DiscoveryError(f"unknown GPU SKU {sku!r}; known: {', '.join(sorted(known_skus))}")
    import uuid

    gpus = tuple(
        Gpu(i, f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'minicloud:{host_id}:{i}')}", f"configured {sku}", sku, 0)
        for i in range(count)
    )
    return HostGpus("config", gpus, notes=("no NVML: GPUs as configured (processes see no real GPU)",))


def _err(nvml: Any, name: str) -> type[BaseException]:
    found: type[BaseException] = getattr(nvml, name, None) or nvml.NVMLError
    return found


def _health(nvml: Any, handle: Any) -> tuple[str | None, str]:
    """The first fault NVML reports for a device, or (None, "")."""
    try:
        ecc = nvml.nvmlDeviceGetTotalEccErrors(handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC)
        if ecc:
            return "ecc-dbe", f"{ecc} uncorrected ECC error(s) since the driver loaded"
    except _err(nvml, "NVMLError_NotSupported"):
        pass
    try:
        rows = nvml.nvmlDeviceGetRemappedRows(handle)
        if len(rows) > 3 and rows[3]:
            return "row-remap-failure", "memory row remapping failed: the GPU needs service"
    except _err(nvml, "NVMLError_NotSupported"):
        pass
    return None, ""


def _mig_devices(nvml: Any, handle: Any, sku: str) -> tuple[tuple[str, str], ...]:
    """A GPU's MIG devices, (profile, UUID) in NVML's order, when MIG mode is on. The
    profile is the SKU's with the device's compute slices and the nearest memory (NVML
    reports MB, the profile names round them)."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except (AttributeError, nvml.NVMLError):
        return ()  # no MIG here (or an NVML without it)
    known = skus().get(sku)
    if not current or known is None or not known.mig:
        return ()
    total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20
    out = []
    for i in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            device = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
        except nvml.NVMLError:
            continue  # an index no instance uses
        attrs = nvml.nvmlDeviceGetAttributes(device)
        slices, mb = int(attrs.gpuInstanceSliceCount), int(attrs.memorySizeMB)
        same = [p for p in known.mig if p.compute == slices]
        if not same:
            continue
        profile = min(same, key=lambda p: abs(p.memory_slots * total // 8 - mb))
        out.append((profile.profile, str(nvml.nvmlDeviceGetUUID(device))))
    return tuple(out)


def from_nvml(nvml: Any) -> HostGpus:
    """GPUs as NVML reports them (``nvml``: ``pynvml`` or a fake with its names)."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise DiscoveryError(f"NVML is not available here ({exc}): configure the GPUs instead") from exc
    try:
        driver = str(nvml.nvmlSystemGetDriverVersion())
        gpus: list[Gpu] = []
        by_bus: dict[str, int] = {}
        links: dict[int, list[str]] = {}
        notes: list[str] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = str(nvml.nvmlDeviceGetName(handle))
                uuid = str(nvml.nvmlDeviceGetUUID(handle))
                memory_mib = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // (1024 * 1024)
                by_bus[str(nvml.nvmlDeviceGetPciInfo(handle).busId).lower()] = index
            except _err(nvml, "NVMLError_GpuIsLost") as exc:
                gpus.append(Gpu(index, f"lost-{index}", "unknown", "unknown", 0, (), "xid-79", f"{exc}"))
                continue
            peers: list[str] = []
            for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
                try:
                    if nvml.nvmlDeviceGetNvLinkState(handle, link):
                        peers.append(str(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId).lower())
                except nvml.NVMLError:
                    break  # NotSupported (no NVLink, or no more links): no peers is a valid answer
            links[index] = peers
            fault, detail = _health(nvml, handle)
            sku = sku_for(name, memory_mib)
            if sku is None:
                notes.append(f"gpu{index}: no SKU maps {name!r} ({memory_mib} MiB): add it to SKU_BY_NAME")
                sku = "unknown"
            gpus.append(Gpu(index, uuid, name, sku, memory_mib, (), fault, detail, _mig_devices(nvml, handle, sku)))
        # Peers as GPUs of this host (a link to an NVSwitch shows the switch's bus id:
        # every GPU behind the same switches is a peer).
        resolved = []
        for g in gpus:
            peer_ids = {by_bus[b] for b in links.get(g.index, []) if b in by_bus}
            switched = bool(links.get(g.index)) and not peer_ids
            if switched:
                peer_ids = {o.index for o in gpus if o.index != g.index and links.get(o.index)}
            names = tuple(sorted(f"gpu{i}" for i in peer_ids if i != g.index))
            resolved.append(Gpu(g.index, g.uuid, g.name, g.sku, g.memory_mib, names, g.fault, g.fault_detail, g.mig))
        return HostGpus("nvml", tuple(resolved), driver, tuple(notes))
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


Fault = tuple[int, str, str]  # (GPU index, inventory's fault code, what was seen)


def faults_of(gpus: HostGpus) -> list[Fault]:
    return [(g.index, g.fault, g.fault_detail) for g in gpus.gpus if g.fault is not None]


class XidWatch:
    """Critical Xid events of a host's GPUs, as they happen: an event set registered
    once (NVML delivers only events that occur after registration) and polled without
    waiting. It holds its own ``nvmlInit`` (NVML counts them), so discovery's
    init/shutdown around it leaves it valid. A GPU that cannot register (not
    supported) is watched by the periodic checks alone."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self.handles: list[Any] = []
        self.events = nvml.nvmlEventSetCreate()
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self.handles.append(handle)
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self.events)

    def poll(self) -> list[Fault]:
        out: list[Fault] = []
        while True:
            try:
                data = self.nvml.nvmlEventSetWait_v2(self.events, 0)
            except _err(self.nvml, "NVMLError_Timeout"):
                return out
            index = self.handles.index(data.device) if data.device in self.handles else -1
            if index >= 0:
                out.append((index, f"xid-{data.eventData}", f"Xid {data.eventData} reported by the driver"))

    def close(self) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlEventSetFree(self.events)
            self.nvml.nvmlShutdown()


def health_probe(nvml: Any) -> Any:
    """What the agent checks every ``health_s`` on an NVML host: the Xid events since the
    last look, then ECC and row remapping (a fresh discovery)."""
    watch = XidWatch(nvml)

    def probe() -> list[Fault]:
        return watch.poll() + faults_of(from_nvml(nvml))

    return probe
