#!/usr/bin/env bash
# mpirun -np 2 normlab stress: a data-parallel grid records the ranks and the global batch once
# (rank 0 writes), and a second invocation resumes without rerunning anything.
#   stress_cli_test.sh <mpiexec> <mpiexec flags...> -- <normlab> <scratch dir>
set -euo pipefail
launcher=()
while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
shift
normlab="$1" out="$2"
rm -rf "$out"
args=(stress --preset none --data synthetic --train-examples 256 --test-examples 64
      --workloads mlp --batch-sizes 2 --seeds 0 --normalizers batch_norm,sync_batch_norm,layer_norm
      --no-report --out "$out")
"${launcher[@]}" "$normlab" "${args[@]}"
lines=$(wc -l < "$out/results.jsonl")
[ "$lines" -eq 3 ] || { echo "expected 3 result lines, got $lines"; exit 1; }
grep -q '"global_batch":4' "$out/results.jsonl" || { echo "no global_batch 4 recorded"; exit 1; }
grep -q '"ranks":2' "$out/results.jsonl" || { echo "no ranks recorded"; exit 1; }
if grep -q '"status":"error"' "$out/results.jsonl"; then echo "a run failed"; exit 1; fi
second=$("${launcher[@]}" "$normlab" "${args[@]}" 2>&1)
echo "$second"
echo "$second" | grep -q "3 already in" || { echo "the second invocation did not resume"; exit 1; }
[ "$(wc -l < "$out/results.jsonl")" -eq 3 ] || { echo "the resumed grid appended lines"; exit 1; }
echo "stress over mpirun: ok"
