"""What scheduling reads of the events it consumes (checked against what the producers
emit: ``tests/contract/test_consumer_contracts.py``)."""

from minicloud_shared.contracts.agent import TaskExited
from minicloud_shared.contracts.billing import BudgetExceeded, BudgetRestored
from minicloud_shared.contracts.consumers import Reads
from minicloud_shared.contracts.inventory import (
    GpuFaultCleared,
    GpuFaulted,
    GpuModeSet,
    HostDecommissioned,
    HostDrained,
    HostReachable,
    HostRegistered,
    HostUndrained,
    HostUnreachable,
)

PLACE = {
    "host_id",
    "sku",
    "region",
    "zone",
    "rack",
    "nvlink_domain",
    "gpu_ids",
    "generation",
    "address",
    "cpu_milli",
    "memory_mib",
    "gpu_mode",
    "mig_layout",
}
READS = [
    Reads(HostRegistered, PLACE),
    Reads(GpuModeSet, {"host_id", "generation", "gpu_mode", "mig_layout"}),
    Reads(HostDrained, {"host_id", "generation", "reason"}),
    Reads(HostUndrained, {"host_id", "generation"}),
    Reads(GpuFaulted, {"host_id", "generation", "gpu_id", "gpu_index", "code"}),
    Reads(GpuFaultCleared, {"host_id", "generation", "gpu_index"}),
    Reads(HostDecommissioned, {"host_id", "generation"}),
    Reads(HostUnreachable, {"host_id", "generation", "last_seen_at"}),
    Reads(HostReachable, {"host_id", "generation"}),
    Reads(
        TaskExited, {"allocation_id", "workload_id", "host_id", "rank", "exit_code", "exited_at", "stopped", "detail"}
    ),
    Reads(BudgetExceeded, {"reason", "cause", "reached_at"}),
    Reads(BudgetRestored, {"reason"}),
]
