#!/usr/bin/env bash
# The wheelhouse the service images (and the demo's) install from with --no-index (image
# builds need no network): minicloud's own packages, built here, and their dependencies as binary
# wheels for the image's Python (CPython 3.11 on this machine's architecture, glibc
# manylinux), whatever Python runs this script.
#   infra/images/wheels.sh [DIR]        (default .wheels)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-.wheels}
pip=${PIP:-.venv/bin/pip}
arch=$(uname -m)
# The image's exact Python decides environment markers (Debian 12's 3.11.2 still needs
# async-timeout, a 3.11.7 host would not): ask the base image, if it is there.
base=${MINICLOUD_PYTHON_IMAGE:-minicloud/python:3.11-bookworm}
pyver=$(docker run --rm "$base" python3 -c 'import platform; print(platform.python_version())' 2>/dev/null || echo 3.11.2)
stamp="$out/.deps-$(cat requirements/runtime.txt requirements/demo.txt requirements/constraints.txt | sha256sum | cut -c1-16)-$arch-$pyver"
mkdir -p "$out"
rm -f "$out"/minicloud_*.whl
# Reproducible wheels (fixed zip timestamps): unchanged sources give identical bytes,
# so Docker reuses the install layer and make images skips the rebuild.
export SOURCE_DATE_EPOCH=315532800
"$pip" wheel -q --no-deps -w "$out" ./shared ./services/* ./client ./demo >/dev/null
if [ ! -f "$stamp" ]; then
  platforms=(--platform "manylinux2014_$arch")
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  "$pip" download -q -d "$out" --only-binary=:all: --python-version "$pyver" --implementation cp --abi cp311 \
    "${platforms[@]}" -r requirements/runtime.txt -r requirements/demo.txt -c requirements/constraints.txt
  rm -f "$out"/.deps-*
  touch "$stamp"
fi
echo "wheelhouse $out: $(ls "$out"/*.whl | wc -l) wheels for Python $pyver ($arch)"
