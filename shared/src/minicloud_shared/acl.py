"""Redis ACL users: one per service, allowed its own keys and the streams it reads or
writes, and nothing else; the default user off.

Derived from the topology (``contracts.topology``), so a new stream or group is covered
without editing an ACL by hand. Redis 7.0 selectors give a consumer the group commands
on the streams it reads without the right to write into them:

- root permissions: the service's own keys (``mc:<svc>:*``), its own streams
  (``mc.<svc>.*``, commands and events it produces, internal logs) and its dead-letter
  streams (``mc.*.dlq.<svc>``), with data, stream and scripting commands (the commit
  script runs with the caller's permissions: every key it touches is checked);
  the deployment epoch read-only;
- one selector per stream it consumes: the group commands only (``XREADGROUP``,
  ``XACK``, ``XAUTOCLAIM``, ``XPENDING``, ``XINFO``, ``XRANGE``, and ``XGROUP CREATE``,
  which FastStream issues at start and which finds the provisioned group there);
- the gateway may also ``XADD`` to the public command streams (inventory's, scheduling's
  and billing's; not metering's internal one), read every dead-letter stream
  (``XLEN``, ``XREVRANGE``: the operator's ``GET /v1/dead-letters``) and read ``INFO`` (its storage guard
  refuses new work near ``maxmemory``);
- no service may load functions, restore or dump values, or list key names
  (``SCAN``, ``RANDOMKEY``, ``KEYS``): what a service reads it names;
- ``provisioner`` creates streams and groups (``XGROUP CREATE ... MKSTREAM``) and sets
  the epoch; it cannot write any other key, so it cannot replace a stream.

The default user is off (nobody can authenticate as it) but keeps every permission:
Redis replays the AOF as that user and, in 7.0, re-checks each transaction's ACL on
replay, so a default user without rights silently dropped every script's writes at a
restart (``DEFAULT_USER``; test R28).

What Redis 7.0 ACLs cannot express (docs/security.md): consumer groups are not
objects of the ACL, so a service that reads a stream may ``XACK``/``XCLAIM`` another
service's group on it; and the provisioner may overwrite the epoch (``SET`` cannot be
limited to ``NX``), which makes every service stop as not ready, loudly.

The file holds password digests (``#<sha256>``) only; the passwords are in a local
env file the services' URLs are built from, never in an image.

    python -m minicloud_shared.acl write ACL_FILE ENV_FILE
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from pathlib import Path

from minicloud_shared.contracts.topology import (
    AGENT_EVENTS,
    AGENT_LOGS,
    BILLING_COMMANDS,
    EPOCH_KEY,
    GROUPS,
    INVENTORY_COMMANDS,
    SCHEDULING_COMMANDS,
    SERVICES,
    agent_key_prefix,
    stream_owner,
    tasks_stream,
)

USERS = (*SERVICES, "provisioner")
# The default user is off: no connection can authenticate as it, so no client holds its
# rights. It keeps them all because Redis itself runs as it when it replays the AOF, and
# Redis 7.0 re-checks EXEC's permissions on replay (redis/redis#14541, fixed upstream
# later): with none, every transaction in the AOF — every script's effects, so every
# commit — was dropped at a restart while plain writes survived.
DEFAULT_USER = "off resetkeys resetchannels ~* &* +@all"
_CONNECTION = ["-@all", "+@connection", "-@dangerous"]
_DATA = [
    "+@read",
    "+@write",
    "+@keyspace",
    "+@hash",
    "+@string",
    "+@set",
    "+@sortedset",
    "+@stream",
    "+@scripting",
    "-@dangerous",
    "+time",
    "-script|flush",
    "-script|kill",
    "-function|flush",
    "-function|delete",
    "-function|load",
    "-function|restore",
    "-restore",
    "-restore-asking",
    "-dump",
    "-scan",
    "-randomkey",
]
GATEWAY_WRITES = (INVENTORY_COMMANDS, SCHEDULING_COMMANDS, BILLING_COMMANDS)  # the public commands
_CONSUME = [
    "+xreadgroup",
    "+xack",
    "+xautoclaim",
    "+xclaim",
    "+xpending",
    "+xinfo|groups",
    "+xinfo|consumers",
    "+xinfo|stream",
    "+xrange",
    "+xrevrange",
    "+xlen",
    "+xgroup|create",
    "+evalsha",
    "+eval",
]


def agent_user(host_id: str) -> str:
    """The Redis user of one host's agent."""
    return f"agent-{host_id}"


def agent_rules(host_id: str) -> list[str]:
    """A host agent may do its host's work and nothing else: its own keys
    (``mc:agent:<host_id>:*``), its host's task stream through its group (and trimming
    what its group has read: it is that stream's only reader), and appending
    to the agents' events, to workload logs (which it caps and expires) and to
    inventory's commands (its registration and GPU faults). It reads no other host's
    tasks and no service's state."""
    return [
        "resetkeys",
        "resetchannels",
        *_CONNECTION,
        f"~{agent_key_prefix(host_id)}*",
        f"%R~{EPOCH_KEY}",
        *_DATA,
        f"(~{tasks_stream(host_id)} {' '.join(_CONSUME)} +exists +xtrim)",  # it trims what it has read
        f"(~{AGENT_EVENTS} ~{INVENTORY_COMMANDS} +xadd)",
        f"(~{AGENT_LOGS}.* +xadd +expire)",
    ]


def rules(user: str) -> list[str]:
    """The ACL rules of ``user`` (after ``on`` and the password)."""
    if user == "provisioner":
        return [
            "resetkeys",
            "resetchannels",
            *_CONNECTION,
            "~mc.*",
            "+xgroup|create",
            "+xinfo|groups",
            f"(~{EPOCH_KEY} +set +get)",
        ]
    if user not in SERVICES:
        raise ValueError(f"unknown user {user!r}")
    own = [f"~mc:{user}:*", f"~mc.{user}.*", f"~mc.*.dlq.{user}", f"%R~{EPOCH_KEY}"]
    out = ["resetkeys", "resetchannels", *_CONNECTION, *own, *_DATA]
    consumed = sorted({g.stream for g in GROUPS if g.group == user and stream_owner(g.stream) != user})
    for stream in consumed:
        out.append(f"(~{stream} {' '.join(_CONSUME)})")
    if user == "gateway":
        out.append("(" + " ".join(f"~{s}" for s in sorted(GATEWAY_WRITES)) + " +xadd)")
        out.append(f"(~{AGENT_LOGS}.* +xrange +xread)")  # workloads' logs, for their tenants
        out.append("(~mc.*.dlq.* +xlen +xrevrange)")  # every group's dead letters, for the operator
        out.append("+info")
    return out


def digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_file(passwords: dict[str, str], agents: tuple[str, ...] = ()) -> str:
    # An ACL file has no comments: what it is is said in the module docstring.
    lines = [f"user default {DEFAULT_USER}"]
    for user in USERS:
        lines.append(f"user {user} on #{digest(passwords[user])} " + " ".join(rules(user)))
    for host_id in agents:
        user = agent_user(host_id)
        lines.append(f"user {user} on #{digest(passwords[user])} " + " ".join(agent_rules(host_id)))
    return "\n".join(lines) + "\n"


def env_var(user: str) -> str:
    return "MINICLOUD_REDIS_PASSWORD_" + user.upper().replace("-", "_").replace(".", "_")


def read_env(path: Path) -> dict[str, str]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
    return out


def write(acl_path: Path, env_path: Path, agents: tuple[str, ...] = ()) -> dict[str, str]:
    """Write the ACL file; passwords come from ``env_path`` (made, with random ones, if
    missing). ``agents``: the host ids whose agents get a user."""
    env = read_env(env_path)
    users = (*USERS, *(agent_user(h) for h in agents))
    passwords = {u: env.get(env_var(u)) or secrets.token_urlsafe(24) for u in users}
    env_path.parent.mkdir(parents=True, exist_ok=True)
    others = {k: v for k, v in env.items() if k not in {env_var(u) for u in users}}  # e.g. the operator key
    env_path.write_text(
        "# Secrets of minicloud's local stack (generated; keep out of images and version control).\n"
        + "".join(f"{env_var(u)}={p}\n" for u, p in passwords.items())
        + "".join(f"{k}={v}\n" for k, v in others.items())
    )
    env_path.chmod(0o600)
    acl_path.parent.mkdir(parents=True, exist_ok=True)
    acl_path.write_text(acl_file(passwords, agents))
    acl_path.chmod(0o644)
    return passwords


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[0] != "write":
        print("usage: python -m minicloud_shared.acl write ACL_FILE ENV_FILE [AGENT_HOST_ID ...]", file=sys.stderr)
        return 2
    agents = tuple(args[3:])
    write(Path(args[1]), Path(args[2]), agents)
    print(f"wrote {args[1]} ({len(USERS) + len(agents)} users, default off) and {args[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
