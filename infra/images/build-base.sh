#!/usr/bin/env bash
# Build a Debian bookworm base image from Debian packages and import it into the local
# Docker engine — for machines whose engine cannot pull from a container registry.
#
#   build-base.sh IMAGE_NAME "pkg1,pkg2,..." [docker import --change ...]
#
# Skips the build when IMAGE_NAME exists already. mmdebstrap uses this machine's own
# apt sources, so no mirror is named here. Where a registry is reachable, point the
# image variables (MINICLOUD_REDIS_IMAGE, ...) at official images instead and skip this.
set -euo pipefail
image=${1:?image name}
packages=${2:?comma-separated Debian packages}
shift 2

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "image $image exists; not rebuilding"
  exit 0
fi
if [ "${MINICLOUD_TRY_PULL:-1}" = 1 ] && timeout 120 docker pull --quiet "$image" >/dev/null 2>&1; then
  echo "pulled $image"
  exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "mmdebstrap is missing: run 'make deps' (installs it with apt-get), or use an official image" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building $image from Debian packages: $packages"
start=$(date +%s)
mmdebstrap --quiet --variant=apt --include="$packages" \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "$work/rootfs.tar"
docker import "$@" "$work/rootfs.tar" "$image" >/dev/null
echo "built $image in $(( $(date +%s) - start ))s"
