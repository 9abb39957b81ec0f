#!/bin/sh
# One command on a fresh Debian 12 machine, as root: install the
# dependencies, build (normal and sanitized), and run every test.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh --sanitize
./scripts/check-format.sh
echo "== unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
ASAN_OPTIONS=detect_leaks=1 ./build-asan/stasis_unit_tests --gtest_brief=1
echo "== all tests (unit and end-to-end)"
ctest --test-dir build --output-on-failure -j 2 --timeout 300
