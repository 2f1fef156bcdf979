"""What the gateway's projections read of the events they consume (checked against
what the producers emit: ``tests/contract/test_consumer_contracts.py``). Dead letters
(``DeadLettered``) are the runtime's, not a service's: ``test_hardening`` covers them."""

from minicloud_shared.contracts.agent import EndpointReady, TaskRunning
from minicloud_shared.contracts.billing import (
    AccountUpdated,
    AllocationCharged,
    BillingCommandRejected,
    BudgetAlert,
    BudgetExceeded,
    BudgetRestored,
    InvoiceUpdated,
    PriceCatalogPublished,
)
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
    InventoryCommandRejected,
)
from minicloud_shared.contracts.scheduling import (
    AllocationPlaced,
    AllocationReleased,
    ReservationGranted,
    WorkloadAccepted,
    WorkloadEnded,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadStarted,
)

SPEC = {"workload_id", "name", "kind", "sku", "gpus_per_node", "nodes", "region", "price_class", "skus"}
SPEC |= {"gpu_milli", "cpu_milli", "memory_mib", "mig_profile"}
ACCOUNT = {"credits", "credit_limit", "soft_budget", "hard_budget", "charged", "currency", "state", "cause"}
INVOICE = {"invoice_id", "month", "status", "revision", "as_of", "currency", "lines", "total"}
RESERVATION = {"reservation_id", "sku", "region", "gpus", "starts_at", "ends_at"}
READS = [
    Reads(WorkloadAccepted, SPEC | {"run"}),
    Reads(WorkloadRejected, {"workload_id", "code", "reason"}),
    Reads(WorkloadQueued, {"workload_id", "code", "reason"}),
    Reads(
        AllocationPlaced,
        {
            "allocation_id",
            "workload_id",
            "sku",
            "region",
            "gpu_count",
            "gpus",
            "started_at",
            "gpu_milli",
            "cpu_milli",
            "memory_mib",
            "mig_profile",
        },
    ),
    Reads(WorkloadStarted, {"workload_id", "started_at"}),
    Reads(WorkloadEnded, {"workload_id", "outcome", "reason", "ended_at", "exit_code", "host_id"}),
    Reads(TaskRunning, {"workload_id", "allocation_id", "rank", "running_at"}),
    Reads(EndpointReady, {"workload_id", "allocation_id", "address", "port", "host_id"}),
    Reads(HostUnreachable, {"host_id", "generation"}),
    Reads(HostReachable, {"host_id", "generation"}),
    Reads(
        AllocationCharged, {"workload_id", "allocation_id", "gpu_seconds", "minimum_gpu_seconds", "amount", "currency"}
    ),
    Reads(AllocationReleased, {"allocation_id", "gpus"}),
    Reads(
        HostRegistered,
        {
            "host_id",
            "generation",
            "region",
            "zone",
            "rack",
            "nvlink_domain",
            "sku",
            "gpu_ids",
            "address",
            "cpu_milli",
            "memory_mib",
            "gpu_mode",
            "mig_layout",
        },
    ),
    Reads(GpuModeSet, {"host_id", "generation", "gpu_mode", "mig_layout"}),
    Reads(HostDrained, {"host_id", "generation", "reason"}),
    Reads(HostUndrained, {"host_id", "generation"}),
    Reads(HostDecommissioned, {"host_id", "generation"}),
    Reads(GpuFaulted, {"host_id", "generation", "gpu_index"}),
    Reads(GpuFaultCleared, {"host_id", "generation", "gpu_index"}),
    Reads(ReservationGranted, RESERVATION),
    Reads(InventoryCommandRejected, {"command_id", "code", "reason"}),
    Reads(BillingCommandRejected, {"code", "reason"}),
    Reads(InvoiceUpdated, INVOICE),
    Reads(AccountUpdated, ACCOUNT | {"month", "month_charged"}),
    Reads(BudgetAlert, {"month", "charged", "currency", "soft_budget"}),
    Reads(BudgetExceeded, {"reason", "cause"}),
    Reads(BudgetRestored, {"reason"}),
    Reads(PriceCatalogPublished, {"version", "effective_at", "currency", "prices"}),
]
