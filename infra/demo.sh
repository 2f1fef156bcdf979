#!/usr/bin/env bash
# make demo: a simulated month of a GPU datacenter on the compose stack, through the
# public API only, with a report under results/demo-<time>/.
#   MINICLOUD_DEMO_MINUTES  real minutes for the simulated month (default 5)
#   MINICLOUD_DEMO_DAYS     simulated days (default: the whole next calendar month)
# The stack runs as its own compose project (minicloud-demo, gateway on
# MINICLOUD_DEMO_PORT, default 8090) with an accelerated clock every service shares,
# and is removed afterwards (with its data); a `make up` cloud is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
compose=${COMPOSE_CMD:-$(docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)}
project=minicloud-demo
start=$(date -u -d "$(date -u +%Y-%m-01) +1 month" +%Y-%m-01T00:00:00+00:00)
month_days=$(( ( $(date -u -d "$start +1 month" +%s) - $(date -u -d "$start" +%s) ) / 86400 ))
days=${MINICLOUD_DEMO_DAYS:-$month_days}
minutes=${MINICLOUD_DEMO_MINUTES:-5}
factor=$(python3 -c "print(round($days * 86400 / ($minutes * 60)))")
# The simulated month starts 40 s from now: the stack starts and the fleet is set up
# (in the simulated last hours of the month before) by then.
anchor=$(( $(date +%s) + 40 ))
run=demo-$(date -u +%Y%m%d-%H%M%S)
mkdir -p results/"$run"
export MINICLOUD_CLOCK="accelerated:${factor}@${start}~${anchor}"
export MINICLOUD_TICK_S=600 MINICLOUD_METER_INTERVAL_S=3600 MINICLOUD_RATE_LIMIT_PER_S=100000
export MINICLOUD_DEMO_DAYS=$days MINICLOUD_DEMO_RUN=$run MINICLOUD_UID=$(id -u)
export MINICLOUD_GATEWAY_PORT=${MINICLOUD_DEMO_PORT:-8090} MINICLOUD_REDIS_PORT=${MINICLOUD_DEMO_REDIS_PORT:-6390}
# The demo's hundreds of jobs are simulated (no image, no command: the simulator
# completes them), so it starts no host agents; its own workloads' network keeps it
# apart from a make up stack's.
export MINICLOUD_WORKLOAD_NETWORK=minicloud-demo-workloads
dc() { $compose -p "$project" --env-file .run/compose.env --profile demo "$@"; }
cleanup() { dc down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
echo "demo: $days simulated days from $start at x$factor (~$minutes real minutes), project $project"
dc up -d redis provision inventory scheduling metering billing gateway
for s in inventory scheduling metering billing gateway; do infra/wait-healthy.sh "$project" "$s" 120; done
# -T only when there is no terminal (CI, a pipe): the progress bar needs one.
tty=""; [ -t 1 ] || tty="-T"
dc run --rm $tty simulator
echo
echo "report: results/$run/report.html"
ls results/"$run"
