"""The run's report: a summary for the terminal and an HTML page with plots (PNGs
beside it) — utilization over time per SKU, queue waits by workload kind, revenue by
SKU and price class, invoices per tenant. Drawn from the run's record alone."""

from __future__ import annotations

import html
import json
import statistics
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from minicloud_demo.sim import Record

KIND_ORDER = ["pre_training", "fine_tuning", "training", "inference", "dev"]


# A hard budget holds when the month ends at it give or take one meter reading of what
# the tenant ran when it was reached: here a minute of 64 GPUs at 6 USD/GPU-hour.
HELD = Decimal(64 * 60) * Decimal("6.00") / 3600


def summarize(record: Record) -> dict[str, Any]:
    """The headline numbers."""
    totals = {inv["tenant"]: inv["total"] for inv in record.invoices}
    revenue: dict[tuple[str, str], Decimal] = {}
    by_version: dict[str, Decimal] = {}
    gpu_hours = Decimal(0)
    for inv in record.invoices:
        for ln in inv["lines"]:
            if ln["sku"]:
                key = (ln["sku"], ln["price_class"] or "-")
                revenue[key] = revenue.get(key, Decimal(0)) + Decimal(ln["amount"])
            if ln["kind"] in ("usage", "minimum"):
                gpu_hours += Decimal(ln["gpu_seconds"]) / 3600
                v = ln.get("catalog_version") or "-"
                by_version[v] = by_version.get(v, Decimal(0)) + Decimal(ln["amount"])
    waits: dict[str, list[float]] = {}
    outcomes: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for w in record.workloads:
        if w.get("first_started_at") and w.get("submitted_at"):
            wait = (
                datetime.fromisoformat(w["first_started_at"]) - datetime.fromisoformat(w["submitted_at"])
            ).total_seconds()
            waits.setdefault(w.get("kind", "?"), []).append(max(0.0, wait) / 3600)
        if w["status"] == "ended":
            outcomes[w.get("outcome", "?")] = outcomes.get(w.get("outcome", "?"), 0) + 1
        if w["status"] == "rejected":
            rejected[w.get("code", "?")] = rejected.get(w.get("code", "?"), 0) + 1
    util = utilization(record)
    mean_util = {sku: statistics.fmean(v for _, v in pts) if pts else 0.0 for sku, pts in util.items()}
    interruptions: dict[str, int] = {}
    for w in record.workloads:
        for code, n in (w.get("interruptions") or {}).items():
            interruptions[code] = interruptions.get(code, 0) + n
    return {
        "period": f"{record.start[:10]} .. {record.end[:10]}",
        "real_minutes": round(record.real_seconds / 60, 1),
        "factor": record.factor,
        "hosts": record.hosts,
        "gpus": sum(record.gpus.values()),
        "workloads_submitted": record.submitted,
        "workloads_run": sum(1 for w in record.workloads if w.get("first_started_at")),
        "outcomes": outcomes,
        "rejected": rejected,
        "spot_preempted": interruptions.get("preempted", 0),
        "interruptions": interruptions,
        "faults": sum(1 for e in record.events if e["kind"] == "fault"),
        "drains": sum(1 for e in record.events if e["kind"] == "drain"),
        "budget_stops": [e["tenant"] for e in record.events if e["kind"] == "budget"],
        "gpu_hours_billed": str(gpu_hours.quantize(Decimal("0.1"))),
        "revenue": str(sum(revenue.values(), Decimal(0))),
        "revenue_by_sku_class": {f"{s}/{c}": str(v) for (s, c), v in sorted(revenue.items())},
        "revenue_by_catalog_version": {k: str(v) for k, v in sorted(by_version.items())},
        "invoices": {inv["tenant"]: inv["total"] for inv in record.invoices},
        "hard_budgets": {
            t: {"budget": b, "invoice": totals.get(t, "0"), "held": Decimal(totals.get(t, "0")) <= Decimal(b) + HELD}
            for t, b in sorted(record.hard_budgets.items())
        },
        "mean_utilization": {k: round(v, 3) for k, v in sorted(mean_util.items())},
        "queue_wait_hours_p50": {k: round(statistics.median(v), 2) for k, v in sorted(waits.items()) if v},
        "queue_wait_hours_p90": {
            k: round(sorted(v)[int(0.9 * (len(v) - 1))], 2) for k, v in sorted(waits.items()) if v
        },
        **waiting_with_free_gpus(record),
        "api_calls": record.api_calls,
        "api_errors": record.api_errors,
    }


def waiting_with_free_gpus(record: Record) -> dict[str, Any]:
    """At each hourly sample, every workload waiting to start (submitted, not yet
    started, not rejected) and whether its pool (its SKU, in its region or any) had as
    many free GPUs in total as it needs: the waiting hours a queue policy could have
    used. Work waiting for its tenant's budget or quota counts too (the record does not
    say why each waited), so the share is an upper bound of what backfill can fix."""
    end = datetime.fromisoformat(record.end)
    spans = []
    for w in record.workloads:
        if w["status"] == "rejected" or not w.get("submitted_at") or not w.get("sku"):
            continue
        start = datetime.fromisoformat(w["first_started_at"]) if w.get("first_started_at") else end
        gpus = int(w.get("gpus_per_node") or 0) * int(w.get("nodes") or 1)
        spans.append((datetime.fromisoformat(w["submitted_at"]), start, w["sku"], w.get("region"), gpus))
    waiting = with_free = 0
    for sample in record.samples:
        at = datetime.fromisoformat(sample["at"])
        free: dict[tuple[str, str], int] = {}
        for key, c in sample["capacity"].items():
            sku, region = key.split("|")
            free[(sku, region)] = max(0, c["total"] - c["allocated"] - c["faulted"] - c["draining"])
        for submitted, started, sku, region, gpus in spans:
            if submitted <= at < started:
                waiting += 1
                pool = sum(n for (s, r), n in free.items() if s == sku and region in (None, r))
                with_free += pool >= gpus
    over_an_hour = sum(1 for submitted, started, *_ in spans if (started - submitted).total_seconds() > 3600)
    return {
        "waited_over_an_hour": over_an_hour,
        "waiting_hours": waiting,
        "waiting_hours_with_free_gpus": with_free,
        "waiting_hours_with_free_gpus_share": round(with_free / waiting, 3) if waiting else 0.0,
    }


def utilization(record: Record) -> dict[str, list[tuple[datetime, float]]]:
    """Allocated / in-service GPUs per SKU (all regions), per sample."""
    out: dict[str, list[tuple[datetime, float]]] = {}
    for s in record.samples:
        at = datetime.fromisoformat(s["at"])
        per: dict[str, list[int]] = {}
        for key, c in s["capacity"].items():
            sku = key.split("|")[0]
            acc = per.setdefault(sku, [0, 0])
            acc[0] += c["allocated"]
            acc[1] += c["total"] - c["faulted"]
        for sku, (alloc, total) in per.items():
            out.setdefault(sku, []).append((at, alloc / total if total else 0.0))
    return out


def render_text(s: dict[str, Any]) -> str:
    lines = [
        f"minicloud demo: {s['period']} simulated in {s['real_minutes']} real minutes (x{s['factor']:.0f})",
        f"  fleet:      {s['hosts']} hosts, {s['gpus']} GPUs",
        f"  workloads:  {s['workloads_submitted']} submitted, {s['workloads_run']} ran; "
        f"rejected {s['rejected'] or 0}; spot preempted {s['spot_preempted']}",
        "  refused by the API: " + (", ".join(f"{k} {v}" for k, v in sorted(s["api_errors"].items())) or "-"),
        f"  events:     {s['faults']} GPU faults, {s['drains']} drains, "
        f"budget stops: {', '.join(s['budget_stops']) or '-'}",
        f"  billed:     {s['gpu_hours_billed']} GPU-hours, {s['revenue']} USD",
        "  utilization (mean): " + ", ".join(f"{k} {v:.0%}" for k, v in s["mean_utilization"].items()),
        f"  waiting hours: {s['waiting_hours']} ({s['waited_over_an_hour']} workloads waited over an hour); "
        f"with enough free GPUs in their pool: {s['waiting_hours_with_free_gpus']} "
        f"({s['waiting_hours_with_free_gpus_share']:.0%})",
        "  queue wait p50/p90 (h): "
        + ", ".join(
            f"{k} {s['queue_wait_hours_p50'][k]}/{s['queue_wait_hours_p90'][k]}" for k in s["queue_wait_hours_p50"]
        ),
        "  invoices:   " + ", ".join(f"{t} {v}" for t, v in s["invoices"].items()),
        "  hard budgets: "
        + (
            ", ".join(
                f"{t} {h['invoice']} of {h['budget']} ({'held' if h['held'] else 'NOT held'})"
                for t, h in s.get("hard_budgets", {}).items()
            )
            or "-"
        ),
        "  revenue by catalog version: " + ", ".join(f"{k} {v}" for k, v in s["revenue_by_catalog_version"].items()),
    ]
    return "\n".join(lines)


def plots(record: Record, s: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    """The four plots as PNGs in ``out``; returns (file, caption) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []

    def num(at: datetime | str) -> float:
        return float(
            mdates.date2num(  # type: ignore[no-untyped-call]
                datetime.fromisoformat(at) if isinstance(at, str) else at
            )
        )

    cut = num(record.price_cut_at)

    fig, ax = plt.subplots(figsize=(10, 4.2))
    for sku, pts in sorted(utilization(record).items()):
        ax.plot([num(p[0]) for p in pts], [100 * p[1] for p in pts], label=sku, linewidth=1.4)
    ax.axvline(cut, color="grey", linestyle="--", linewidth=1)
    ax.text(cut, 102, " price cut", color="grey", fontsize=8, va="bottom")
    for e in record.events:
        if e["kind"] == "fault":
            ax.plot(num(e["at"]), 1, marker="v", color="crimson", markersize=4, alpha=0.6)
        if e["kind"] == "budget":
            ax.axvline(num(e["at"]), color="orange", linestyle=":", linewidth=1)
    ax.set_ylim(0, 108)
    ax.set_ylabel("GPUs allocated, % of in service")
    ax.set_title("Utilization per SKU (▼ GPU faults, ⋮ a tenant hits its budget)")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))  # type: ignore[no-untyped-call]
    ax.legend(loc="lower right", fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "utilization.png", dpi=110)
    plt.close(fig)
    made.append(("utilization.png", "Utilization over time per SKU"))

    waits: dict[str, list[float]] = {}
    for w in record.workloads:
        if w.get("first_started_at") and w.get("submitted_at"):
            d = (
                datetime.fromisoformat(w["first_started_at"]) - datetime.fromisoformat(w["submitted_at"])
            ).total_seconds()
            waits.setdefault(w.get("kind", "?"), []).append(max(d, 0) / 3600)
    kinds = [k for k in KIND_ORDER if k in waits]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    if kinds:
        ax.boxplot([waits[k] for k in kinds], tick_labels=kinds, showfliers=True, whis=(10, 90))
    ax.set_ylabel("hours from submission to start")
    ax.set_title("Queue waits by workload kind (box: quartiles, whiskers: p10-p90)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "queue_waits.png", dpi=110)
    plt.close(fig)
    made.append(("queue_waits.png", "Queue waits by workload kind"))

    rev: dict[str, dict[str, float]] = {}
    for key, v in s["revenue_by_sku_class"].items():
        sku, cls = key.split("/")
        rev.setdefault(sku, {})[cls] = float(v)
    skus = sorted(rev)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    bottom = [0.0] * len(skus)
    for cls, color in (("reserved", "#4c72b0"), ("on_demand", "#55a868"), ("spot", "#c44e52")):
        vals = [rev[k].get(cls, 0.0) for k in skus]
        ax.bar(skus, vals, bottom=bottom, label=cls, color=color)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("USD")
    ax.set_title(f"Revenue by SKU and price class (total {s['revenue']} USD)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "revenue.png", dpi=110)
    plt.close(fig)
    made.append(("revenue.png", "Revenue by SKU and price class"))

    tenants = list(s["invoices"])
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.barh(tenants, [float(s["invoices"][t]) for t in tenants], color="#8172b2")
    for i, t in enumerate(tenants):
        ax.text(float(s["invoices"][t]), i, f" {s['invoices'][t]}", va="center", fontsize=8)
    ax.set_xlabel("USD")
    ax.set_title("Final invoices per tenant")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out / "invoices.png", dpi=110)
    plt.close(fig)
    made.append(("invoices.png", "Invoices per tenant"))
    return made


def write(record: Record, out: Path) -> dict[str, Any]:
    """The summary, the plots, the page and the raw record, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "record.json").write_text(json.dumps(asdict(record), indent=1, default=str))
    s = summarize(record)
    images = plots(record, s, out)
    (out / "summary.json").write_text(json.dumps(s, indent=2))
    (out / "summary.txt").write_text(render_text(s) + "\n")
    (out / "report.html").write_text(_page(record, s, images))
    return s


def _table(rows: list[list[Any]], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _page(record: Record, s: dict[str, Any], images: list[tuple[str, str]]) -> str:
    cards = [
        ("simulated", s["period"]),
        ("real time", f"{s['real_minutes']} min (x{s['factor']:.0f})"),
        ("fleet", f"{s['hosts']} hosts, {s['gpus']} GPUs"),
        ("workloads run", f"{s['workloads_run']} of {s['workloads_submitted']}"),
        ("GPU-hours billed", s["gpu_hours_billed"]),
        ("revenue", f"{s['revenue']} USD"),
        ("GPU faults / drains", f"{s['faults']} / {s['drains']}"),
        ("spot preemptions", s["spot_preempted"]),
        ("budget stops", ", ".join(s["budget_stops"]) or "-"),
        (
            "hard budgets",
            ", ".join(
                f"{t}: {h['invoice']} of {h['budget']} ({'held' if h['held'] else 'not held'})"
                for t, h in s.get("hard_budgets", {}).items()
            )
            or "-",
        ),
    ]
    card_html = "".join(
        f"<div class=card><div class=k>{html.escape(k)}</div><div class=v>{html.escape(str(v))}</div></div>"
        for k, v in cards
    )
    figs = "".join(
        f"<figure><img src='{f}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}</figcaption></figure>"
        for f, c in images
    )
    inv_rows = [
        [i["tenant"], i["invoice_id"], i["status"], len(i["lines"]), f"{i['total']} {i['currency']}"]
        for i in record.invoices
    ]
    waits = [[k, s["queue_wait_hours_p50"][k], s["queue_wait_hours_p90"][k]] for k in s["queue_wait_hours_p50"]]
    versions = [[k, f"{v} USD"] for k, v in s["revenue_by_catalog_version"].items()]
    cuts = [[k, f"-{v}%"] for k, v in record.price_cuts.items()]
    return f"""<!doctype html><html><head><meta charset=utf-8><title>minicloud demo report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}}
.cards{{display:flex;flex-wrap:wrap;gap:.6em}}
.card{{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;min-width:9em}}
.k{{font-size:.8em;color:#666}}.v{{font-size:1.15em;font-weight:600}}img{{max-width:100%}}figure{{margin:1.5em 0}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ddd;padding:.25em .6em;text-align:left}}</style></head>
<body><h1>minicloud: a simulated month</h1>
<p>Driven through the public API only: {record.api_calls} calls. The datacenter, the tenants and the workload mix are in
<code>demo/src/minicloud_demo/scenario.py</code>; the price cut took effect on {record.price_cut_at[:10]}.</p>
<div class=cards>{card_html}</div>{figs}
<h2>Invoices</h2>{_table(inv_rows, ["tenant", "invoice", "status", "lines", "total"])}
<h2>Queue waits (hours)</h2>{_table(waits, ["kind", "p50", "p90"])}
<p>Waiting hours (a workload waiting at an hourly sample): {s["waiting_hours"]}, of which with enough free GPUs
in its pool: {s["waiting_hours_with_free_gpus"]} ({s["waiting_hours_with_free_gpus_share"]:.0%});
{s["waited_over_an_hour"]} workloads waited more than an hour.</p>
<h2>Revenue by catalog version</h2>{_table(versions, ["catalog version", "revenue"])}
<h2>The price cut</h2>{_table(cuts, ["SKU / class", "change"])}
</body></html>
"""
