#!/usr/bin/env bash
# Run minicloud's services as local processes (no Docker needed).
#   infra/local.sh redis          start a redis-server process (no Docker needed)
#   infra/local.sh start          start the five services, wait until each is ready, then the
#                                 local hosts' agents (process runtime: configured GPUs, no Docker)
#   infra/local.sh stop|status|logs
# Logs and pids go to .run/. Each service answers /healthz and /readyz on its port.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.run
PY=${VENV:-.venv}/bin/python
SERVICES=(inventory scheduling metering billing gateway)
# The local hosts (as in compose): host id, GPUs, NVLink domain.
AGENTS=("local-h1|8 x h100-80gb-sxm|eu-1a-r01-nvl0" "local-h2|8 x h100-80gb-sxm|eu-1a-r01-nvl0" "local-l1|1 x l40s-48gb-pcie|eu-1a-r02-nvl0")
BASE_PORT=${MINICLOUD_HEALTH_BASE_PORT:-8101}
mkdir -p "$RUN"

# The gateway serves the public API (and its health) on MINICLOUD_GATEWAY_PORT, 8080 as in compose.
port_of() { [ "$1" = gateway ] && { echo "${MINICLOUD_GATEWAY_PORT:-8080}"; return; }; local i=0; for s in "${SERVICES[@]}"; do [ "$s" = "$1" ] && { echo $((BASE_PORT + i)); return; }; i=$((i + 1)); done; }
alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

case "${1:-}" in
  redis)
    port=${MINICLOUD_REDIS_PORT:-6379}
    if redis-cli -p "$port" ping >/dev/null 2>&1; then echo "redis already answers on $port"; exit 0; fi
    command -v redis-server >/dev/null || { echo "redis-server is missing: make deps" >&2; exit 1; }
    mkdir -p "$RUN/redis"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$PWD/$RUN/redis" --appendonly yes \
      --maxmemory-policy noeviction --daemonize yes --pidfile "$PWD/$RUN/redis.pid" --logfile "$PWD/$RUN/redis.log"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    echo "redis-server on 127.0.0.1:$port (data in $RUN/redis)"
    ;;
  start)
    url=${MINICLOUD_REDIS_URL:-redis://localhost:6379/0}
    "${VENV:-.venv}/bin/minicloud-provision" --redis-url "$url"
    # The operator's key (make acl writes it into .run/compose.env, as for compose).
    operator_key=$(sed -n 's/^MINICLOUD_OPERATOR_KEY=//p' "$RUN/compose.env" 2>/dev/null || true)
    for s in "${SERVICES[@]}"; do
      if alive "$s"; then echo "$s already running"; continue; fi
      MINICLOUD_REDIS_URL=$url MINICLOUD_HEALTH_PORT=$(port_of "$s") MINICLOUD_LOG_FORMAT=json \
        MINICLOUD_OPERATOR_KEY=$operator_key MINICLOUD_HEALTH_HOST=127.0.0.1 \
        nohup "$PY" -m "minicloud_$s" >"$RUN/$s.log" 2>&1 &
      echo $! >"$RUN/$s.pid"
    done
    for s in "${SERVICES[@]}"; do
      port=$(port_of "$s"); ok=""
      for _ in $(seq 100); do
        if curl -fsS "localhost:$port/readyz" >/dev/null 2>&1; then ok=1; break; fi
        alive "$s" || break
        sleep 0.1
      done
      if [ -n "$ok" ]; then echo "  $s ready (health on :$port)"; else echo "  $s NOT ready: see $RUN/$s.log" >&2; exit 1; fi
    done
    for a in "${AGENTS[@]}"; do
      IFS='|' read -r host gpus domain <<<"$a"
      if alive "agent-$host"; then echo "agent-$host already running"; continue; fi
      MINICLOUD_REDIS_URL=$url MINICLOUD_LOG_FORMAT=json MINICLOUD_AGENT_HOST_ID=$host MINICLOUD_AGENT_GPUS=$gpus \
        MINICLOUD_AGENT_REGION=eu-1 MINICLOUD_AGENT_ZONE=eu-1a MINICLOUD_AGENT_RACK=${domain%-*} \
        MINICLOUD_AGENT_NVLINK_DOMAIN=$domain MINICLOUD_AGENT_RUNTIME=process MINICLOUD_AGENT_WORKDIR=$RUN/tasks \
        nohup "$PY" -m minicloud_agent >"$RUN/agent-$host.log" 2>&1 &
      echo $! >"$RUN/agent-$host.pid"
      echo "  agent of $host started ($gpus; log $RUN/agent-$host.log)"
    done
    echo
    echo "minicloud is up. Redis: $url"
    echo "  readiness:  curl localhost:$BASE_PORT/readyz   (ports $BASE_PORT-$((BASE_PORT + 3)): inventory scheduling metering billing; the gateway on $(port_of gateway))"
    echo "  streams:    redis-cli -u $url XINFO STREAM mc.scheduling.events"
    echo "  logs:       infra/local.sh logs     stop: make down"
    echo "  public API: http://localhost:$(port_of gateway)   (CLI: .venv/bin/minicloud; operator key: MINICLOUD_OPERATOR_KEY in $RUN/compose.env)"
    echo "  console:    http://localhost:$(port_of gateway)/console/   (sign in with that key)"
    ;;
  stop)
    for a in "${AGENTS[@]}"; do
      host=${a%%|*}
      if alive "agent-$host"; then kill "$(cat "$RUN/agent-$host.pid")"; echo "stopped the agent of $host"; fi
      rm -f "$RUN/agent-$host.pid"
    done
    # Their programs outlive them by design (a restarted agent adopts them): stop them too.
    for pid in "$RUN"/tasks/*/*/launcher.pid; do [ -f "$pid" ] && kill -KILL -- "-$(cat "$pid")" 2>/dev/null || true; done
    for s in "${SERVICES[@]}"; do
      if alive "$s"; then kill "$(cat "$RUN/$s.pid")"; echo "stopped $s"; fi
      rm -f "$RUN/$s.pid"
    done
    if [ -f "$RUN/redis.pid" ]; then redis-cli -p "${MINICLOUD_REDIS_PORT:-6379}" shutdown >/dev/null 2>&1 || true; rm -f "$RUN/redis.pid"; echo "stopped redis-server"; fi
    ;;
  status)
    for s in "${SERVICES[@]}"; do
      port=$(port_of "$s")
      if alive "$s"; then echo "$s: $(curl -s "localhost:$port/readyz" || echo 'no answer')"; else echo "$s: not running"; fi
    done
    ;;
  logs)
    tail -n 20 -F "$RUN"/*.log
    ;;
  *)
    echo "usage: $0 redis|start|stop|status|logs" >&2; exit 2 ;;
esac
