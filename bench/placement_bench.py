"""Placement decisions per second, in process (issue: inventory and scheduling).

A synthetic fleet of 10,000 hosts x 8 GPUs (80,000 GPUs: 2 regions x 5 zones x 125
racks of 8 hosts, NVLink domains of 2 hosts) is filled to 50% and 90% by the engine
itself with a mix of sizes, then churned (random releases and new placements) so its
free space is fragmented as a real one is. Then each measured decision is one
``find`` plus, when it places, one ``claim``; after each, a random live allocation
is released (untimed) to hold the occupancy. Decisions that find no room count too:
"no" is a decision. The real fleet is Alibaba's 2026 spot GPU trace
(../shared/data, 4,278 nodes, 10,412 GPUs of 6 models).
"""

from __future__ import annotations

import csv
import random
import resource
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bestfit_reference import BestFit
from bench.common import Result, median, with_ratio
from minicloud_scheduling.placement import Fleet, HostView, Placement, Request

REAL_FLEET = Path(__file__).resolve().parents[2] / "shared" / "data" / "alibaba-spot-gpu-2026-nodes.csv"
MIX = [Request(1), Request(1), Request(2), Request(4), Request(8), Request(8, nodes=2), Request(8, nodes=4)]


def synthetic_fleet(hosts: int = 10_000, **declared: Any) -> Fleet:
    """``hosts`` 8 x H100 hosts; ``declared``: what else each declares (``shared``,
    ``cpu_milli``, ``memory_mib``)."""
    f = Fleet()
    for i in range(hosts):
        region, rest = divmod(i, hosts // 2)
        zone, rest = divmod(rest, hosts // 10)
        rack, slot = divmod(rest, 8)
        f.upsert(
            HostView(
                f"h{i}",
                "h100-80gb-sxm",
                f"region-{region}",
                f"z{zone}",
                f"r{rack}",
                f"nvl{slot // 2}",
                8,
                set(range(8)),
                **declared,
            )
        )
    return f


def fill(f: Fleet, occupancy: float, rng: random.Random, mix: list[Request] = MIX) -> list[Placement]:
    """Place the mix until ``occupancy`` of the GPUs are taken, churning on the way."""
    total = sum(h.gpu_count for h in f.hosts.values())
    live: list[Placement] = []
    used = 0
    misses = 0
    while used < occupancy * total and misses < 1000:
        p = f.find(rng.choice(mix))
        if isinstance(p, Placement):
            f.claim(p)
            live.append(p)
            used += p.gpus
            if rng.random() < 0.3 and len(live) > 10:  # churn: free a random one
                gone = live.pop(rng.randrange(len(live)))
                for host_id, gpus in gone.slices:
                    f.release(host_id, gpus)
                used -= gone.gpus
        else:
            misses += 1
    return live


def decisions_per_s(
    f: Fleet, live: list[Placement], requests: list[Request], rng: random.Random, seconds: float = 2.0
) -> tuple[float, float]:
    timed = 0.0
    done = placed = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        req = requests[done % len(requests)]
        t0 = time.perf_counter()
        p = f.find(req)
        if isinstance(p, Placement):
            f.claim(p)
        timed += time.perf_counter() - t0
        done += 1
        if isinstance(p, Placement):
            placed += 1
            live.append(p)
            # Hold the occupancy: release about as many GPUs as were just placed.
            freed = 0
            while freed < p.gpus and live:
                gone = live.pop(rng.randrange(len(live)))
                for host_id, gpus in gone.slices:
                    f.release(host_id, gpus)
                freed += gone.gpus
    return done / timed, placed / max(done, 1)


def mirror(f: Fleet) -> BestFit:
    """The reference best-fit index holding the same free GPUs as ``f``."""
    ref = BestFit()
    for h in f.hosts.values():
        ref.add(h.host_id, h.free)
    return ref


def steady(decide: Callable[[], bool], seconds: float) -> tuple[float, float]:
    """Decisions a second of ``decide`` (each takes back what it placed, so the state
    holds), and the share that placed."""
    done = placed = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(100):
            placed += decide()
        done += 100
    return done / (now - t0), placed / max(done, 1)


def against_bestfit(f: Fleet, g: int, seconds: float) -> tuple[float, float, float]:
    """(engine, reference) decisions a second for one-host requests of ``g`` GPUs on the
    same state, and the share the engine placed."""
    request = Request(g, sku="h100-80gb-sxm")
    ref = mirror(f)

    def engine() -> bool:
        p = f.find(request)
        if isinstance(p, Placement):
            f.claim(p)
            for host_id, gpus in p.slices:
                f.release(host_id, gpus)
            return True
        return False

    def reference() -> bool:
        p = ref.find(g)
        if p is not None:
            ref.claim(*p)
            ref.release(*p)
            return True
        return False

    mine, ok = steady(engine, seconds)
    theirs, _ = steady(reference, seconds)
    return mine, theirs, ok


def real_fleet() -> Fleet:
    f = Fleet()
    with REAL_FLEET.open() as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            gpus = int(row["gpu_capacity_num"])
            sku = row["gpu_model"].lower()
            rack = i // 8  # the trace has no racks: 8 nodes in a row share one
            f.upsert(
                HostView(
                    f"n{row['node_name']}", sku, "cn", "z0", f"r{rack}", f"n{row['node_name']}", gpus, set(range(gpus))
                )
            )
    return f


def run(url: str = "", repeats: int = 3, seconds: float = 2.0, **_: object) -> list[Result]:
    results: list[Result] = []
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fleet = synthetic_fleet()  # kept alive while measured
    fleet_mb = (tracemalloc.get_traced_memory()[0] - before) / 2**20
    tracemalloc.stop()
    assert sum(h.gpu_count for h in fleet.hosts.values()) == 80_000
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  80,000-GPU fleet view: {fleet_mb:.1f} MiB traced, process RSS {rss_mb:.0f} MiB")
    for occupancy in (0.5, 0.9):
        for name, reqs in (
            ("single_gpu", [Request(1, sku="h100-80gb-sxm")]),
            ("gang64", [Request(8, nodes=8, sku="h100-80gb-sxm")]),
        ):
            rates, success = [], []
            for r in range(repeats):
                rng = random.Random(r)
                f = synthetic_fleet()
                live = fill(f, occupancy, rng)
                rate, ok = decisions_per_s(f, live, reqs, rng, seconds)
                rates.append(rate)
                success.append(ok)
            value = round(median(rates), 1)
            goal = 1000 if name == "single_gpu" else 200
            print(f"  {name} at {occupancy:.0%}: {value:,.0f} decisions/s (goal {goal}), placed {median(success):.0%}")
            results.append(
                Result(
                    f"placement.{name}_per_s@{int(occupancy * 100)}pct",
                    value,
                    "decisions/s",
                    runs=rates,
                    note=f"80,000 GPUs, {occupancy:.0%} occupied; goal >= {goal}/s; "
                    f"{median(success):.0%} of decisions placed",
                )
            )
    # Against the simplest indexed best fit (bench/bestfit_reference.py), on the same
    # states: one-host requests at 50% and 90%, and refusals on a full fleet.
    for occupancy in (0.5, 0.9, 1.0):
        mine_runs, ref_runs, accept_runs = [], [], []
        for r in range(repeats):
            f = synthetic_fleet()
            fill(f, occupancy, random.Random(r), [Request(1)] if occupancy == 1.0 else MIX)
            g = 8 if occupancy == 1.0 else 1
            mine, theirs, ok = against_bestfit(f, g, seconds / 2)
            mine_runs.append(mine)
            ref_runs.append(theirs)
            accept_runs.append(ok)
        tag = "full" if occupancy == 1.0 else f"{int(occupancy * 100)}pct"
        what = "refusal" if occupancy == 1.0 else "single_gpu"
        reference = Result(f"placement.bestfit_{what}_per_s@{tag}", round(median(ref_runs), 1), "decisions/s")
        reference.runs = ref_runs
        reference.note = "baseline: the simplest indexed best fit (bench/bestfit_reference.py), same fleet state"
        engine = Result(f"placement.{what}_vs_bestfit@{tag}", round(median(mine_runs), 1), "decisions/s")
        engine.runs = mine_runs
        engine.note = f"minicloud's engine on the same state; goal ratio >= 0.5; {median(accept_runs):.0%} placed"
        results += [reference, with_ratio(engine, reference)]
        print(
            f"  {what} at {tag}: engine {engine.value:,.0f}/s, indexed best fit {reference.value:,.0f}/s "
            f"(ratio {engine.ratio}), placed {median(accept_runs):.0%}"
        )
        if occupancy == 0.5:
            acceptance = engine
    refusal = results[-1]
    results.append(
        Result(
            "placement.refusal_vs_acceptance",
            round(refusal.value / acceptance.value, 3) if acceptance.value else 0.0,
            "ratio",
            baseline=acceptance.name,
            ratio=round(refusal.value / acceptance.value, 3) if acceptance.value else None,
            note="refusals a second on a full fleet over acceptances a second at 50%: goal >= 1 (a refusal "
            "scans nothing)",
        )
    )
    results.append(
        Result(
            "scheduling.fleet_view_mib",
            round(fleet_mb, 1),
            "MiB",
            note="memory of the placement view of 10,000 hosts x 8 GPUs (tracemalloc)",
        )
    )
    results.append(
        Result(
            "scheduling.rss_mib_at_80k_gpus",
            round(rss_mb, 1),
            "MiB",
            note="peak resident memory of the process (Python, its libraries, the view) holding 80,000 GPUs",
        )
    )
    if REAL_FLEET.exists():
        rng = random.Random(7)
        real_mix = [Request(1)] * 7 + [Request(8), Request(8, nodes=2), Request(8, nodes=4)]
        rates = []
        for r in range(repeats):
            f = real_fleet()
            live = fill(f, 0.5, random.Random(r), real_mix)
            rate, ok = decisions_per_s(f, live, real_mix, rng, seconds)
            rates.append(rate)
        value = round(median(rates), 1)
        print(f"  real fleet (4,278 nodes, 10,412 GPUs) at 50%: {value:,.0f} decisions/s")
        results.append(
            Result(
                "placement.real_fleet_per_s",
                value,
                "decisions/s",
                runs=rates,
                note="Alibaba 2026 spot GPU fleet, 50% occupied; 70% single GPUs, 30% 8-GPU-per-node "
                "gangs of 1-4 nodes",
            )
        )
    else:
        print(f"  real fleet data not found at {REAL_FLEET}: placement.real_fleet_per_s skipped")
    return results
