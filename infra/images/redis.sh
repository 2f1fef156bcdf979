#!/usr/bin/env bash
# The Redis image the tests (testcontainers) and the compose stack run: Debian's
# redis-server 7.0 on a bookworm root file system. Configuration is passed at run time
# (compose mounts infra/redis/); the default command suits a throwaway test broker.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${MINICLOUD_REDIS_IMAGE:-minicloud/redis:7.0-bookworm}
exec "$here/build-base.sh" "$image" "redis-server,redis-tools" \
  --change 'EXPOSE 6379' \
  --change 'WORKDIR /data' \
  --change 'CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--appendonly", "yes", "--dir", "/tmp"]'
