#!/bin/sh
# Installs everything Stasis needs to build and test, from Debian 12's
# packages only. This is the one list of the project's dependencies.
# Idempotent: safe to run again.
set -eu

PACKAGES="
  build-essential cmake ninja-build pkg-config
  libprotobuf-dev protobuf-compiler
  libzstd-dev libxxhash-dev libssl-dev
  libfmt-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  clang-format
  python3
  procps iproute2 nftables
"
# For the system tests on a real Jupyter session; with their recommended
# packages, as a user's install would have them.
JUPYTER_PACKAGES="
  jupyter-server python3-jupyter-server python3-ipykernel
  python3-jupyter-client jupyter-client jupyter-core python3-numpy python3-terminado
  python3-websocket
"
# For the batch-job tests (integrations/slurm): a real Slurm, started by the
# tests themselves (tests/system/slurm_lib.py), never as a service.
SLURM_PACKAGES="
  slurmctld slurmd slurm-client munge libslurm-dev
"

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (it uses apt-get)" >&2
  exit 1
fi

missing() {
  out=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out="$out $p"
  done
  echo "$out"
}
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
need=$(missing $PACKAGES)
# shellcheck disable=SC2086
need_jupyter=$(missing $JUPYTER_PACKAGES)
# shellcheck disable=SC2086
need_slurm=$(missing $SLURM_PACKAGES)
if [ -n "$need$need_jupyter$need_slurm" ]; then
  echo "install-deps.sh: installing:$need$need_jupyter$need_slurm"
  apt-get update -qq
fi
# shellcheck disable=SC2086
[ -z "$need" ] || apt-get install -y -qq --no-install-recommends $need >/dev/null
# shellcheck disable=SC2086
[ -z "$need_jupyter" ] || apt-get install -y -qq $need_jupyter >/dev/null
# shellcheck disable=SC2086
[ -z "$need_slurm" ] || apt-get install -y -qq $need_slurm >/dev/null
echo "install-deps.sh: all dependencies present"
