#!/bin/sh
# Installs everything Stasis needs to build and test, from Debian 12's
# packages only. This is the one list of the project's dependencies.
# Idempotent: safe to run again.
set -eu

PACKAGES="
  build-essential cmake ninja-build pkg-config
  libprotobuf-dev protobuf-compiler
  libzstd-dev libxxhash-dev
  libfmt-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  clang-format
  python3
  procps iproute2 nftables
"

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (it uses apt-get)" >&2
  exit 1
fi

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install-deps.sh: installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
echo "install-deps.sh: all dependencies present"
