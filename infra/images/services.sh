#!/usr/bin/env bash
# Build the five service images from the wheelhouse; skips an image whose inputs (the
# wheelhouse and the Dockerfile) have not changed since it was built.
#   infra/images/services.sh [SERVICE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${MINICLOUD_PYTHON_IMAGE:-minicloud/python:3.11-bookworm}
tag=${MINICLOUD_IMAGE_TAG:-dev}
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(inventory scheduling metering billing gateway)
infra/images/python.sh
infra/images/wheels.sh .wheels
inputs=$( (cat infra/images/Dockerfile; echo "$base"; sha256sum .wheels/*.whl) | sha256sum | cut -c1-16)
for svc in "${services[@]}"; do
  image="minicloud/$svc:$tag"
  if [ "$(docker image inspect -f '{{ index .Config.Labels "minicloud.inputs" }}' "$image" 2>/dev/null)" = "$inputs" ]; then
    echo "image $image is up to date"
    continue
  fi
  start=$(date +%s)
  docker build -q -f infra/images/Dockerfile --build-arg SERVICE="$svc" --build-arg BASE_IMAGE="$base" \
    --label minicloud.inputs="$inputs" -t "$image" . >/dev/null
  echo "built $image in $(( $(date +%s) - start ))s"
done
