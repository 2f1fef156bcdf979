"""Stream, group and dead-letter names: defined here once, used everywhere.

Each owning service has a command stream (written by the gateway, read by the owner)
and an event stream (written by the owner, read by whoever needs the facts). A
consuming service reads a stream through one consumer group named after itself; each
(stream, group) has its own dead-letter stream. Redis keys a service owns all start
with ``mc:<service>:``; streams with ``mc.<owner>.``.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVICES = ("inventory", "scheduling", "metering", "billing", "gateway")
# The host agent runs once per host (``mc:agent:<host_id>:`` keys): not one of the
# control plane's services, and its Redis users are per host (``acl.agent_user``).
AGENT = "agent"

INVENTORY_COMMANDS = "mc.inventory.commands"
INVENTORY_EVENTS = "mc.inventory.events"
SCHEDULING_COMMANDS = "mc.scheduling.commands"
SCHEDULING_EVENTS = "mc.scheduling.events"
METERING_COMMANDS = "mc.metering.commands"
METERING_USAGE = "mc.metering.usage"
BILLING_COMMANDS = "mc.billing.commands"
BILLING_EVENTS = "mc.billing.events"
GATEWAY_EVENTS = "mc.gateway.events"
# One task stream per host, written by scheduling, read by that host's agent alone
# (group ``agent``): ``mc.scheduling.tasks.<host_id>``.
SCHEDULING_TASKS = "mc.scheduling.tasks"
AGENT_EVENTS = "mc.agent.events"
# One log stream per workload, written by the agents of its hosts (capped), read by
# the gateway: ``mc.agent.logs.<workload_id>``.
AGENT_LOGS = "mc.agent.logs"


def tasks_stream(host_id: str) -> str:
    """The stream of one host's tasks (start and stop its allocations' processes)."""
    return f"{SCHEDULING_TASKS}.{host_id}"


def logs_stream(workload_id: str) -> str:
    """The stream of one workload's output lines."""
    return f"{AGENT_LOGS}.{workload_id}"


# The deployment's epoch marker, written once by provisioning. A running service that
# finds it gone knows Redis lost its state (restarted empty) and stops being ready.
EPOCH_KEY = "mc:epoch"


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    owner: str
    description: str


@dataclass(frozen=True, slots=True)
class GroupSpec:
    stream: str
    group: str

    @property
    def dead_letter_stream(self) -> str:
        return dead_letter_stream(self.stream, self.group)


STREAMS: dict[str, StreamSpec] = {
    s.name: s
    for s in (
        StreamSpec(INVENTORY_COMMANDS, "inventory", "Commands to inventory: register, drain, fault hosts."),
        StreamSpec(INVENTORY_EVENTS, "inventory", "Host and GPU lifecycle and health facts."),
        StreamSpec(SCHEDULING_COMMANDS, "scheduling", "Workload commands: submit, complete, cancel."),
        StreamSpec(SCHEDULING_EVENTS, "scheduling", "Workload and allocation lifecycle."),
        StreamSpec(METERING_COMMANDS, "metering", "Internal: metering's clock ticks (meter readings of open spans)."),
        StreamSpec(METERING_USAGE, "metering", "Usage records: GPU-seconds per allocation span."),
        StreamSpec(BILLING_COMMANDS, "billing", "Billing commands: catalog versions, credits, budgets."),
        StreamSpec(BILLING_EVENTS, "billing", "Charges, invoices, budget exceeded/restored."),
        StreamSpec(GATEWAY_EVENTS, "gateway", "Identity facts: tenants created, keys issued and revoked."),
        StreamSpec(
            SCHEDULING_TASKS,
            "scheduling",
            "Per host (mc.scheduling.tasks.<host_id>): start and stop its allocations' processes; "
            "read by that host's agent.",
        ),
        StreamSpec(AGENT_EVENTS, "agent", "Host agents' facts: heartbeats, processes running and exited, endpoints."),
        StreamSpec(
            "mc.scheduling.hostlog", "scheduling", "Internal: host records changed (scheduling replicas follow it)."
        ),
    )
}


def dead_letter_stream(stream: str, group: str) -> str:
    """The dead-letter stream of one consumer group on one stream."""
    return f"{stream}.dlq.{group}"


def stream_owner(stream: str) -> str:
    """Who writes a stream: its owner, or for a dead-letter stream the group that gives up."""
    if ".dlq." in stream:
        return stream.rsplit(".dlq.", 1)[1]
    if stream.startswith(SCHEDULING_TASKS + "."):
        return "scheduling"
    if stream.startswith(AGENT_LOGS + "."):
        return AGENT
    return STREAMS[stream].owner


# Who reads what. Provisioning creates exactly these groups, at id 0.
GROUPS: tuple[GroupSpec, ...] = (
    GroupSpec(INVENTORY_COMMANDS, "inventory"),
    GroupSpec(SCHEDULING_EVENTS, "inventory"),  # which GPUs are busy
    GroupSpec(SCHEDULING_COMMANDS, "scheduling"),
    GroupSpec(INVENTORY_EVENTS, "scheduling"),
    GroupSpec(BILLING_EVENTS, "scheduling"),
    GroupSpec(SCHEDULING_EVENTS, "metering"),
    GroupSpec(METERING_COMMANDS, "metering"),
    GroupSpec(METERING_USAGE, "billing"),
    GroupSpec(BILLING_COMMANDS, "billing"),
    GroupSpec(SCHEDULING_EVENTS, "billing"),
    GroupSpec(INVENTORY_EVENTS, "gateway"),
    GroupSpec(SCHEDULING_EVENTS, "gateway"),
    GroupSpec(BILLING_EVENTS, "gateway"),
    GroupSpec(GATEWAY_EVENTS, "gateway"),
    GroupSpec(AGENT_EVENTS, "inventory"),  # heartbeats
    GroupSpec(AGENT_EVENTS, "scheduling"),  # exits end workloads
    GroupSpec(AGENT_EVENTS, "gateway"),  # running, endpoints
    # The commands the gateway published that their owner gave up on: the operation
    # (or submission) the gateway follows fails with the reason.
    *(
        GroupSpec(dead_letter_stream(s, o), "gateway")
        for s, o in (
            (INVENTORY_COMMANDS, "inventory"),
            (SCHEDULING_COMMANDS, "scheduling"),
            (BILLING_COMMANDS, "billing"),
        )
    ),
)


def key_prefix(service: str) -> str:
    """The prefix of every Redis key ``service`` owns."""
    return f"mc:{service}:"


def agent_key_prefix(host_id: str) -> str:
    """The prefix of every Redis key one host's agent owns."""
    return f"{key_prefix(AGENT)}{host_id}:"


def groups_of(service: str) -> tuple[GroupSpec, ...]:
    return tuple(g for g in GROUPS if g.group == service)
