"""What metering reads of the events it consumes (checked against what the producers
emit: ``tests/contract/test_consumer_contracts.py``)."""

from minicloud_shared.contracts.consumers import Reads
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased

READS = [
    Reads(
        AllocationPlaced,
        {
            "allocation_id",
            "workload_id",
            "sku",
            "region",
            "price_class",
            "gpu_count",
            "started_at",
            "gpu_milli",
            "cpu_milli",
            "memory_mib",
            "mig_profile",
        },
    ),
    Reads(AllocationReleased, {"allocation_id", "released_at", "reason"}),
]
