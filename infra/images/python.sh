#!/usr/bin/env bash
# The base image of the service images: Debian bookworm's Python 3.11 with venv.
# Where a registry is reachable, MINICLOUD_PYTHON_IMAGE=python:3.11-slim-bookworm (the
# official image) serves as well; this script then pulls it instead of building.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${MINICLOUD_PYTHON_IMAGE:-minicloud/python:3.11-bookworm}
exec "$here/build-base.sh" "$image" "python3,python3-venv,ca-certificates"
