#!/usr/bin/env bash
# Wait until a compose service's container reports healthy (compose v1 has no --wait).
#   infra/wait-healthy.sh PROJECT SERVICE SECONDS
set -euo pipefail
project=$1 service=$2 limit=${3:-60}
for _ in $(seq "$((limit * 2))"); do
  id=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=$service" | head -n1)
  if [ -n "$id" ] && [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]; then
    echo "$service is healthy"; exit 0
  fi
  sleep 0.5
done
echo "$service did not become healthy within ${limit}s; see: docker logs \$(docker ps -q --filter label=com.docker.compose.service=$service)" >&2
exit 1
