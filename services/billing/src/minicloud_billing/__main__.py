"""``python -m minicloud_billing`` runs the service. Read-only questions:

python -m minicloud_billing invoice TENANT [MONTH] [--json]
python -m minicloud_billing explain TENANT MONTH LINE_ID [--json]
python -m minicloud_billing account TENANT [--json]
python -m minicloud_billing quote SKU GPUS HOURS [--class on_demand] [--region R] [--at ISO] [--json]
"""

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from minicloud_billing.app import SERVICE, build
from minicloud_billing.queries import account, explain, invoice, load_catalog, render_invoice
from minicloud_shared.pricing import Unpriced, month_of, quote
from minicloud_shared.runtime.entrypoint import main, query_main


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minicloud_billing", description="billing's read-only questions")
    p.add_argument("--json", action="store_true", help="answer as JSON")
    sub = p.add_subparsers(dest="what", required=True)
    inv = sub.add_parser("invoice", help="a tenant's invoice (current charges, or final)")
    inv.add_argument("tenant")
    inv.add_argument("month", nargs="?", help="YYYY-MM (default: this month)")
    exp = sub.add_parser("explain", help="why an invoice line was charged")
    exp.add_argument("tenant")
    exp.add_argument("month")
    exp.add_argument("line_id")
    acc = sub.add_parser("account", help="a tenant's credit, limits, budgets and state")
    acc.add_argument("tenant")
    q = sub.add_parser("quote", help="the price of GPUs for a duration")
    q.add_argument("sku")
    q.add_argument("gpus", type=int)
    q.add_argument("hours", type=float)
    q.add_argument("--class", dest="price_class", default="on_demand", choices=["on_demand", "spot", "reserved"])
    q.add_argument("--region", default="*")
    q.add_argument("--at", help="start instant, ISO 8601 (default: now)")
    for s in (inv, exp, acc, q):
        s.add_argument("--json", action="store_true", help="answer as JSON")
    return p.parse_args(argv)


def _dump(x: Any) -> str:
    return json.dumps(x, indent=2, default=str)


if len(sys.argv) > 1 and sys.argv[1] in ("invoice", "explain", "account", "quote", "-h", "--help"):
    args = _parse(sys.argv[1:])

    async def answer(redis: Redis, as_json: bool) -> str:
        if args.what == "invoice":
            inv = await invoice(redis, args.tenant, args.month or month_of(datetime.now(UTC)))
            return _dump(inv) if as_json else render_invoice(inv)
        if args.what == "explain":
            rows = await explain(redis, args.tenant, args.month, args.line_id)
            if as_json:
                return _dump(rows)
            out = [f"{args.line_id}:"]
            for r in rows:
                out.append(f"  {r['allocation_id']}: {r['gpu_seconds']} GPU-seconds in {r['records']} record(s)")
                out += [f"    {u['usage_id']} from {u['from']}: {u['gpu_seconds']}" for u in r["usage_records"][:20]]
            return "\n".join(out) if rows else f"no usage behind {args.line_id}"
        if args.what == "account":
            return _dump(await account(redis, args.tenant))
        start = datetime.fromisoformat(args.at) if args.at else datetime.now(UTC)
        catalog = await load_catalog(redis)
        try:
            priced = quote(
                catalog,
                sku=args.sku,
                gpus=args.gpus,
                duration_s=int(args.hours * 3600),
                price_class=args.price_class,
                region=args.region,
                start=start,
            )
        except Unpriced as exc:
            return f"no price: {exc}"
        if as_json:
            return _dump(priced)
        what = f"{args.gpus} x {args.sku} ({args.price_class}) for {args.hours} h"
        return f"{what}: {priced['amount']} {priced['currency']}"

    raise SystemExit(query_main(SERVICE, args.what, answer))
raise SystemExit(main(SERVICE, build))
