#!/bin/sh
# Builds Stasis into build/ (and, with --sanitize, an ASan+UBSan build of the
# unit tests into build-asan/). Installs `stasis` into /usr/local/bin.
set -eu
cd "$(dirname "$0")/.."
JOBS=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j "$JOBS"
if [ "${1:-}" = "--sanitize" ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSTASIS_SANITIZE=ON >/dev/null
  ninja -C build-asan -j "$JOBS" stasis_unit_tests
fi
cmake --install build --prefix /usr/local >/dev/null
echo "build.sh: stasis installed at $(command -v stasis || echo /usr/local/bin/stasis)"
