#!/usr/bin/env bash
# Installs everything normlab needs from Debian's packages (idempotent: does nothing when all
# packages are present), and any further packages named as arguments (benchmarks/run.sh: the
# peers it compares with). Run as root or with sudo available.
set -euo pipefail

PACKAGES=(
  cmake make g++ pkg-config
  libxtensor-dev libxtensor-blas-dev libxsimd-dev xtl-dev libopenblas-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev zlib1g-dev
  libopenmpi-dev openmpi-bin
  dataset-fashion-mnist
  python3 python3-numpy python3-matplotlib
  "$@"
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "normlab setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
