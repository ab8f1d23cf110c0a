#!/usr/bin/env bash
# Configures and builds normlab in ./build (Release). Extra arguments go to cmake's configure
# step, e.g. scripts/build.sh -DNORMLAB_SANITIZE=address,undefined
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${NORMLAB_BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
