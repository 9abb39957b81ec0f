#!/bin/sh
# One command on a fresh Debian 12 machine, as root: install the
# dependencies, build and install stasis, then run the demo.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
./scripts/demo.sh
