"""What inventory reads of the events it consumes (checked against what the producers
emit: ``tests/contract/test_consumer_contracts.py``)."""

from minicloud_shared.contracts.agent import HostHeartbeat
from minicloud_shared.contracts.consumers import Reads
from minicloud_shared.contracts.scheduling import AllocationPlaced, AllocationReleased

READS = [
    Reads(AllocationPlaced, {"allocation_id", "gpus", "gpu_milli", "mig_profile"}),
    Reads(AllocationReleased, {"allocation_id", "gpus"}),
    Reads(HostHeartbeat, {"host_id", "at", "running"}),
]
