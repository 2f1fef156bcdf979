"""What scheduling reads of the events it consumes (checked against what the producers
emit: ``tests/contract/test_consumer_contracts.py``)."""

from minicloud_shared.contracts.billing import BudgetExceeded, BudgetRestored
from minicloud_shared.contracts.consumers import Reads
from minicloud_shared.contracts.inventory import (
    GpuFaultCleared,
    GpuFaulted,
    HostDecommissioned,
    HostDrained,
    HostRegistered,
    HostUndrained,
)

PLACE = {"host_id", "sku", "region", "zone", "rack", "nvlink_domain", "gpu_ids", "generation"}
READS = [
    Reads(HostRegistered, PLACE),
    Reads(HostDrained, {"host_id", "generation", "reason"}),
    Reads(HostUndrained, {"host_id", "generation"}),
    Reads(GpuFaulted, {"host_id", "generation", "gpu_id", "gpu_index", "code"}),
    Reads(GpuFaultCleared, {"host_id", "generation", "gpu_index"}),
    Reads(HostDecommissioned, {"host_id", "generation"}),
    Reads(BudgetExceeded, {"reason", "cause", "reached_at"}),
    Reads(BudgetRestored, {"reason"}),
]
