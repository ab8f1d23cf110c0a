#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds normlab and runs the main job: the small-batch stress
# test's quick preset (every normalizer × batch sizes 1-64 × 3 seeds on Fashion-MNIST, about
# 1.5 minutes on 2 cores once built). Extra arguments go to `normlab stress`, e.g. --preset paper.
# Running it again resumes an interrupted grid; results are in stress-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
source scripts/blas-env.sh "${NORMLAB_BUILD_DIR:-build}"
# OpenMP's idle threads spin briefly, not for milliseconds beside OpenBLAS's threads, where a run
# takes several threads (--jobs 1; include/normlab/runtime.hpp).
export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-1000}"
"${NORMLAB_BUILD_DIR:-build}/normlab" stress --out "${NORMLAB_STRESS_OUT:-stress-out}" "$@"
