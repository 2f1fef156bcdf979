"""What billing reads of the events it consumes (checked against what the producers
emit: ``tests/contract/test_consumer_contracts.py``)."""

from minicloud_shared.contracts.consumers import Reads
from minicloud_shared.contracts.metering import UsageRecorded
from minicloud_shared.contracts.scheduling import AllocationPlaced

USAGE = {"usage_id", "allocation_id", "workload_id", "kind", "sku", "region", "price_class", "gpus", "start", "end"}
PLACED = {"allocation_id", "workload_id", "sku", "region", "price_class", "gpu_count", "started_at"}
READS = [
    Reads(AllocationPlaced, PLACED | {"gpu_milli", "cpu_milli", "memory_mib", "mig_profile"}),
    Reads(
        UsageRecorded,
        USAGE | {"gpu_seconds", "closes", "allocation_seconds", "release_reason", "unit", "memory_mib", "mig_profile"},
    ),
]
