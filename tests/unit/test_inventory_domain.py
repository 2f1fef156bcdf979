"""Inventory's rules, without I/O."""

from __future__ import annotations

import pytest

from minicloud_inventory import domain
from minicloud_inventory.domain import Host, Refusal
from minicloud_shared.skus import skus


def host(**kw: object) -> Host:
    return domain.register(
        None,
        host_id="h1",
        region="eu-1",
        zone="eu-1a",
        rack="r1",
        nvlink_domain="nvl1",
        sku="h100-80gb-sxm",
        gpu_count=8,
        catalog=skus(),
    ).model_copy(update=kw)


def refusal(fn: object, *args: object) -> Refusal:
    with pytest.raises(Refusal) as info:
        fn(*args)
    return info.value


def test_gpu_states_follow_precedence() -> None:
    h = host(faults={0: "xid-79"}, allocated={0: "a1", 1: "a1", 2: "a2"}, state="draining")
    assert h.gpu_states() == {"faulted": 1, "allocated": 2, "draining": 5}
    assert host().gpu_states() == {"free": 8}
    assert host(state="decommissioned").gpu_states() == {}


def test_register_refuses_duplicates_and_unknown_skus() -> None:
    r = refusal(
        lambda: domain.register(
            host(),
            host_id="h1",
            region="eu-1",
            zone="z",
            rack="r",
            nvlink_domain="n",
            sku="h100-80gb-sxm",
            gpu_count=8,
            catalog=skus(),
        )
    )
    assert (r.code, r.reason) == ("duplicate_host", "host h1 already exists")
    r = refusal(
        lambda: domain.register(
            None,
            host_id="h2",
            region="e",
            zone="z",
            rack="r",
            nvlink_domain="n",
            sku="tpu-v5",
            gpu_count=8,
            catalog=skus(),
        )
    )
    assert r.code == "unknown_sku"
    assert "h100-80gb-sxm" in r.reason  # says what would have been accepted


def test_commands_on_unknown_or_decommissioned_hosts_are_refused() -> None:
    assert refusal(domain.drain, None, "h9", "x").code == "unknown_host"
    assert refusal(domain.drain, host(state="decommissioned"), "h1", "x").code == "decommissioned"


def test_drain_and_undrain_are_not_repeatable() -> None:
    drained = domain.drain(host(), "h1", "firmware")
    assert drained.state == "draining"
    assert refusal(domain.drain, drained, "h1", "again").code == "already_drained"
    assert domain.undrain(drained, "h1").state == "active"
    assert refusal(domain.undrain, host(), "h1").code == "not_drained"


def test_decommissioning_a_busy_host_is_refused_with_its_allocations() -> None:
    busy = domain.allocate(host(), [0, 1], "alloc-7")
    r = refusal(domain.decommission, busy, "h1")
    assert r.code == "host_busy"
    assert "alloc-7" in r.reason
    assert domain.decommission(domain.release(busy, "alloc-7"), "h1").state == "decommissioned"


def test_faults() -> None:
    h = domain.fault(host(), "h1", 3, "xid-79")
    assert h.faults == {3: "xid-79"}
    assert refusal(domain.fault, h, "h1", 3, "xid-79").code == "already_faulted"
    assert refusal(domain.fault, h, "h1", 8, "xid-79").code == "bad_gpu_index"
    assert domain.clear(h, "h1", 3).faults == {}
    assert refusal(domain.clear, host(), "h1", 3).code == "not_faulted"


def test_the_record_round_trips_through_json() -> None:
    h = domain.fault(domain.allocate(host(), [1], "a"), "h1", 2, "xid-48")
    assert Host.model_validate_json(h.model_dump_json()) == h


def test_an_agent_registering_its_host_again_changes_nothing_but_its_address() -> None:
    place = {"host_id": "h1", "region": "eu-1", "zone": "eu-1a", "rack": "r1", "nvlink_domain": "nvl1"}
    existing = host(address="10.0.0.1", allocated={0: "a1"})
    same = {**place, "sku": "h100-80gb-sxm", "gpu_count": 8, "catalog": skus(), "again_ok": True}
    with pytest.raises(domain.Unchanged):
        domain.register(existing, **same, address="10.0.0.1")
    moved = domain.register(existing, **same, address="10.0.0.2")
    assert (moved.address, moved.allocated) == ("10.0.0.2", {0: "a1"})  # nothing else changes
    # Another shape under the same id is another host: refused, as an operator's duplicate is.
    other = {**same, "gpu_count": 4}
    assert refusal(lambda: domain.register(existing, **other)).code == "duplicate_host"


def test_an_unreachable_hosts_free_gpus_take_no_work_and_it_comes_back() -> None:
    h = host(allocated={0: "a1"})
    lost = domain.unreachable(h)
    assert lost is not None
    assert lost.gpu_states() == {"allocated": 1, "draining": 7}
    assert domain.unreachable(lost) is None  # once
    back = domain.reachable(lost)
    assert back is not None
    assert back.gpu_states() == {"allocated": 1, "free": 7}
    assert domain.reachable(back) is None
