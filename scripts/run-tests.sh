#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds normlab and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh "$@"
source scripts/blas-env.sh "${NORMLAB_BUILD_DIR:-build}"
ctest --test-dir "${NORMLAB_BUILD_DIR:-build}" --output-on-failure -j"$(nproc)"
