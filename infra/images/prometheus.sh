#!/usr/bin/env bash
# The Prometheus image the compose stack runs: Debian's prometheus 2.42 (with promtool)
# on a bookworm root file system. Where a registry is reachable, set
# MINICLOUD_PROMETHEUS_IMAGE=prom/prometheus:v2.42.0 instead: compose starts either the
# same way (the `prometheus` and `promtool` commands on PATH, configuration mounted).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${MINICLOUD_PROMETHEUS_IMAGE:-minicloud/prometheus:2.42-bookworm}
exec "$here/build-base.sh" "$image" "prometheus" \
  --change 'EXPOSE 9090' \
  --change 'USER 65534:65534' \
  --change 'WORKDIR /tmp' \
  --change 'CMD ["prometheus", "--config.file=/etc/minicloud/prometheus.yml", "--storage.tsdb.path=/tmp/prometheus"]'
