#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds normlab and runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
"${NORMLAB_BUILD_DIR:-build}/examples/normalizer_tour" "$@"
