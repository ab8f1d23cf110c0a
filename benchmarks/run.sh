#!/usr/bin/env bash
# Runs the comparison benchmarks and regenerates docs/benchmarks.md from their JSON.
#   bash benchmarks/run.sh            # everything (about 15 minutes on 2 cores)
#   BENCH_FILTER=conv bash benchmarks/run.sh   # a subset (Google Benchmark regex / substring)
# Set THREADS (default: all cores). Run on a quiet machine: the numbers are wall-clock medians.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
FILTER="${BENCH_FILTER:-}"
OUT="${BENCH_OUT:-build-bench/results}"
bash scripts/setup.sh
if ! dpkg-query -W -f='${Status}' libdnnl-dev python3-torch 2>/dev/null | grep -q "installed"; then
  echo "benchmarks: installing the peers (libdnnl-dev, python3-torch)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libdnnl-dev python3-torch >/dev/null
fi
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DNORMLAB_BUILD_BENCHMARKS=ON \
  -DNORMLAB_BUILD_TESTS=OFF -DNORMLAB_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-bench -j"$(nproc)" --target normalizer_bench onednn_bench training_bench
mkdir -p "$OUT"
export OMP_NUM_THREADS="$THREADS" OMP_PROC_BIND=close
# Freed tensors are reused instead of being handed back to the kernel and faulted in again on
# the next call (normlab::reuse_freed_memory() in normalizer_bench); the environment gives
# oneDNN and PyTorch the same malloc settings.
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824
# Three repetitions of at least 0.1 s each; the report takes their median.
REPS=(--benchmark_repetitions=3 --benchmark_report_aggregates_only=true)
GB_ARGS=(--benchmark_format=json "${REPS[@]}")
[ -n "$FILTER" ] && GB_ARGS+=("--benchmark_filter=$FILTER|triad")
./build-bench/benchmarks/normalizer_bench "${GB_ARGS[@]}" > "$OUT/normlab.json"
GB_ARGS=(--benchmark_format=json "${REPS[@]}")
[ -n "$FILTER" ] && GB_ARGS+=("--benchmark_filter=$FILTER")
./build-bench/benchmarks/onednn_bench "${GB_ARGS[@]}" > "$OUT/onednn.json"
./build-bench/benchmarks/training_bench --benchmark_format=json \
  ${FILTER:+"--benchmark_filter=$FILTER"} > "$OUT/training.json"
/usr/bin/python3 benchmarks/pytorch_bench.py --threads "$THREADS" --out "$OUT/pytorch.json" \
  --filter "$FILTER" > /dev/null
MACHINE="$(lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L1d|L2|L3)' | sed 's/  */ /g')
compiler: $(c++ --version | head -n1)
threads: $THREADS   commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+local changes')   date: $(date -u +%Y-%m-%d)
oneDNN: $(dpkg-query -W -f='${Version}' libdnnl-dev)   PyTorch: $(dpkg-query -W -f='${Version}' python3-torch)"
python3 benchmarks/report.py --normlab "$OUT/normlab.json" --onednn "$OUT/onednn.json" \
  --pytorch "$OUT/pytorch.json" --training "$OUT/training.json" --machine "$MACHINE" \
  --command "THREADS=$THREADS${FILTER:+ BENCH_FILTER=$FILTER} bash benchmarks/run.sh" \
  --out docs/benchmarks.md
echo "wrote docs/benchmarks.md (raw JSON in $OUT)"
