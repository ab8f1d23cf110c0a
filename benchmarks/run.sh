#!/usr/bin/env bash
# Runs the comparison benchmarks and regenerates docs/benchmarks.md from their JSON.
#   bash benchmarks/run.sh            # everything (about 20 minutes on 2 cores, with the build)
#   BENCH_ROUNDS=5 bash benchmarks/run.sh      # more rounds (default 3; medians over rounds)
#   BENCH_FILTER=conv bash benchmarks/run.sh   # a subset (Google Benchmark regex / substring)
#   BENCH_DOC=docs/benchmarks-mine.md bash benchmarks/run.sh   # the report elsewhere
# Beside the report it writes the run's data (docs/benchmarks.json: what the report is made of),
# from which `python3 benchmarks/report.py --from-data docs/benchmarks.json --out F` makes the
# same report again.
#   NORMLAB_LAST_LEVEL_CACHE=32M bash benchmarks/run.sh     # the kernels plan for a 32 MiB cache
#   NORMLAB_LAST_LEVEL_CACHE=measure bash benchmarks/run.sh # ... for the cache `normlab cache` finds
# Set THREADS (default: all cores). Run on a quiet machine: the numbers are wall-clock medians.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
FILTER="${BENCH_FILTER:-}"
OUT="${BENCH_OUT:-build-bench/results}"
DOC="${BENCH_DOC:-docs/benchmarks.md}"
# The peers: oneDNN (its CMake package config needs OpenCL's development files) and PyTorch
# (python3-torch for the script; libtorch-dev for torch_bench, which times it in turn with normlab).
bash scripts/setup.sh libdnnl-dev ocl-icd-opencl-dev python3-torch libtorch-dev
# The tree the programs are built from, taken before the build: files changed during the run do
# not reach its programs, and the report names the ones that differ from the commit.
COMMIT="$(git rev-parse --short HEAD)"
CHANGED="$(git diff --name-only HEAD | tr '\n' ' ')"
[ -n "$CHANGED" ] && COMMIT="$COMMIT+local changes (${CHANGED% })"
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DNORMLAB_BUILD_BENCHMARKS=ON \
  -DNORMLAB_BUILD_TESTS=OFF -DNORMLAB_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-bench -j"$(nproc)" --target normalizer_bench onednn_bench torch_bench \
  training_bench normlab_cli
# The whole-model figures run through OpenBLAS: its widest kernels for this CPU (blas-env.sh).
source scripts/blas-env.sh build-bench
mkdir -p "$OUT"
export OMP_NUM_THREADS="$THREADS" OMP_PROC_BIND=close
# Freed tensors are reused instead of being handed back to the kernel and faulted in again on
# the next call (normlab::reuse_freed_memory() in normalizer_bench); the environment gives
# oneDNN and PyTorch the same malloc settings.
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824
# A measured plan is measured once, here, so that every program of the run plans for one size,
# the size the report gives.
CACHE_SETTING="${NORMLAB_LAST_LEVEL_CACHE:-}" CACHE_LINE=""
if [ "$CACHE_SETTING" = measure ]; then
  export NORMLAB_LAST_LEVEL_CACHE="$(./build-bench/normlab cache --plan-only)"
  CACHE_LINE="
cache plan: NORMLAB_LAST_LEVEL_CACHE=$NORMLAB_LAST_LEVEL_CACHE, measured by \`normlab cache\` before the run"
  echo "benchmarks: the kernels plan for the measured cache, $NORMLAB_LAST_LEVEL_CACHE" >&2
fi
# Rounds: in each, every shape is timed by normlab, oneDNN and PyTorch one right after the
# other, and the report takes the median over the rounds, so that the machine's drift over
# minutes reaches every implementation alike (a whole program's run takes minutes; one shape's
# cases take seconds). The triad runs once per round, with the first shape.
ROUNDS="${BENCH_ROUNDS:-3}"
TRAINING_SPINCOUNT="${GOMP_SPINCOUNT:-1000}"
if [ -n "$FILTER" ]; then
  GROUPS_=("$FILTER")
else
  GROUPS_=(/mlp/ /conv/ /conv_small_batch/ /conv_deep/ /seq/ /transformer/)
fi
NORMLAB_FILES=() ONEDNN_FILES=() PYTORCH_FILES=() TORCH_PAIRED_FILES=() TRAINING_FILES=()
for round in $(seq 1 "$ROUNDS"); do
  echo "benchmarks: round $round of $ROUNDS" >&2
  for g in "${!GROUPS_[@]}"; do
    group="${GROUPS_[$g]}"
    triad=""; [ "$g" -eq 0 ] && triad="|triad"
    ./build-bench/benchmarks/normalizer_bench --benchmark_format=json \
      "--benchmark_filter=$group$triad" > "$OUT/normlab_${round}_$g.json"
    ./build-bench/benchmarks/onednn_bench --benchmark_format=json \
      "--benchmark_filter=$group" > "$OUT/onednn_${round}_$g.json"
    /usr/bin/python3 benchmarks/pytorch_bench.py --threads "$THREADS" --min-time 0.1 \
      --out "$OUT/pytorch_${round}_$g.json" --filter "$group" > /dev/null
    ./build-bench/benchmarks/torch_bench --benchmark_format=json \
      "--benchmark_filter=$group" > "$OUT/torch_paired_${round}_$g.json"
    NORMLAB_FILES+=("$OUT/normlab_${round}_$g.json")
    ONEDNN_FILES+=("$OUT/onednn_${round}_$g.json")
    PYTORCH_FILES+=("$OUT/pytorch_${round}_$g.json")
    TORCH_PAIRED_FILES+=("$OUT/torch_paired_${round}_$g.json")
  done
  # Whole-model training, once per round as well (about two minutes on 2 cores), with OpenMP's
  # idle threads spinning briefly (include/normlab/runtime.hpp: with libgomp's long spin the
  # CNN's epoch took 1.7-2x the time, its GEMMs running beside threads that spin).
  GOMP_SPINCOUNT="$TRAINING_SPINCOUNT" ./build-bench/benchmarks/training_bench --benchmark_format=json \
    ${FILTER:+"--benchmark_filter=$FILTER"} > "$OUT/training_$round.json"
  TRAINING_FILES+=("$OUT/training_$round.json")
done
MACHINE="$(lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L1d|L2|L3)' | sed 's/  */ /g')
vector ISA: $(grep -o -w -E 'avx512f|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')
compiler: $(c++ --version | head -n1)
threads: $THREADS   commit: $COMMIT   date: $(date -u +%Y-%m-%d)
oneDNN: $(dpkg-query -W -f='${Version}' libdnnl-dev)   PyTorch: $(dpkg-query -W -f='${Version}' python3-torch)
BLAS (whole-model training): $(./build-bench/normlab blas | head -n1 | sed 's/^BLAS kernels: //')$([ -n "${OPENBLAS_CORETYPE:-}" ] && echo " (OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE)")   OpenBLAS: $(dpkg-query -W -f='${Version}' libopenblas0-pthread 2>/dev/null || echo '?')   GOMP_SPINCOUNT=$TRAINING_SPINCOUNT$CACHE_LINE"
python3 benchmarks/report.py --rounds "$ROUNDS" --normlab "${NORMLAB_FILES[@]}" --onednn "${ONEDNN_FILES[@]}" \
  --pytorch "${PYTORCH_FILES[@]}" --pytorch-paired "${TORCH_PAIRED_FILES[@]}" --training "${TRAINING_FILES[@]}" --machine "$MACHINE" \
  --command "${CACHE_SETTING:+NORMLAB_LAST_LEVEL_CACHE=$CACHE_SETTING }THREADS=$THREADS${FILTER:+ BENCH_FILTER=$FILTER}$([ "$ROUNDS" != 3 ] && echo " BENCH_ROUNDS=$ROUNDS")${BENCH_DOC:+ BENCH_DOC=$BENCH_DOC} bash benchmarks/run.sh" \
  --out "$DOC" --data "${DOC%.md}.json"
echo "wrote $DOC and its data ${DOC%.md}.json (the programs' JSON in $OUT)"
