"""Inventory's keys: every ``mc:inventory:`` key is named here."""

from __future__ import annotations

SERVICE = "inventory"
PREFIX = f"mc:{SERVICE}:"
HOSTS = PREFIX + "hosts"  # set of every host id ever registered
CAPACITY = PREFIX + "capacity"  # hash "<sku>|<region>|<state or hosts>" -> count
SEEN = PREFIX + "seen"  # sorted set: host id -> Unix time of its agent's last heartbeat


def host_key(host_id: str) -> str:
    return f"{PREFIX}host:{host_id}"


def capacity_field(sku: str, region: str, what: str) -> str:
    return f"{sku}|{region}|{what}"
