#!/usr/bin/env bash
# Build the five service images from the wheelhouse; skips an image whose inputs (the
# wheelhouse and the Dockerfile) have not changed since it was built. "demo" builds the
# demo simulator's image on top of the gateway's.
#   infra/images/services.sh [SERVICE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${MINICLOUD_PYTHON_IMAGE:-minicloud/python:3.11-bookworm}
tag=${MINICLOUD_IMAGE_TAG:-dev}
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(inventory scheduling metering billing gateway agent)
infra/images/python.sh
# The workloads' image of the local stack (it has no registry): Debian's Python, as the
# services' base. Elsewhere any image the hosts can pull works (MINICLOUD_WORKLOAD_IMAGE).
workload=${MINICLOUD_WORKLOAD_IMAGE:-minicloud/workload:bookworm}
if ! docker image inspect "$workload" >/dev/null 2>&1; then
  docker tag "$base" "$workload" && echo "tagged $base as the workload image $workload"
fi
infra/images/wheels.sh .wheels
# What an image is built from: the services' images do not depend on the demo's wheel.
svc_inputs=$( (cat infra/images/Dockerfile; echo "$base"; sha256sum $(ls .wheels/*.whl | grep -v /minicloud_demo-)) | sha256sum | cut -c1-16)
demo_inputs=$( (echo "$svc_inputs"; cat infra/images/Dockerfile.demo; sha256sum .wheels/*.whl) | sha256sum | cut -c1-16)
for svc in "${services[@]}"; do
  image="minicloud/$svc:$tag"
  inputs=$svc_inputs; [ "$svc" = demo ] && inputs=$demo_inputs
  if [ "$(docker image inspect -f '{{ index .Config.Labels "minicloud.inputs" }}' "$image" 2>/dev/null)" = "$inputs" ]; then
    echo "image $image is up to date"
    continue
  fi
  start=$(date +%s)
  if [ "$svc" = demo ]; then
    docker build -q -f infra/images/Dockerfile.demo --build-arg BASE_IMAGE="minicloud/gateway:$tag" \
      --label minicloud.inputs="$inputs" -t "$image" . >/dev/null
  else
    docker build -q -f infra/images/Dockerfile --build-arg SERVICE="$svc" --build-arg BASE_IMAGE="$base" \
      --label minicloud.inputs="$inputs" -t "$image" . >/dev/null
  fi
  echo "built $image in $(( $(date +%s) - start ))s"
done
