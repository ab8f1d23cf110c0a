#!/usr/bin/env python3
"""Compares a data-parallel stress grid with a single-process one, per-rank batch by per-rank
batch: for each normalizer, the single-process accuracy at batch b, the K-rank accuracy at
per-rank batch b (global K·b), and the single-process accuracy at batch K·b.

    scripts/compare_data_parallel.py SINGLE/results.jsonl DISTRIBUTED/results.jsonl WORKLOAD

Prints a Markdown table of mean test accuracy (%) over the seeds both grids share, with the
number of failed runs where a cell has any."""
import json
import sys
from collections import defaultdict


def load(path, workload):
    cells = defaultdict(list)  # (normalizer, batch) -> results
    ranks = 1
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        c = row["config"]
        if c["workload"] != workload:
            continue
        ranks = c.get("ranks", 1)
        cells[(c["normalizer"], c["batch_size"])].append(row["result"])
    return cells, ranks


def cell(results):
    if not results:
        return "—"
    ok = [r["test_accuracy"] for r in results if r["status"] == "ok"]
    failed = len(results) - len(ok)
    if not ok:
        return "error" if any(r["status"] == "error" for r in results) else "diverged"
    text = f"{100 * sum(ok) / len(ok):.1f}"
    return text + (f" ({failed} failed)" if failed else "")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    single, _ = load(sys.argv[1], sys.argv[3])
    dist, k = load(sys.argv[2], sys.argv[3])
    batches = sorted({b for (_, b) in dist})
    norms = []
    for (n, _) in dist:
        if n not in norms:
            norms.append(n)
    print(f"| normalizer | b per rank | 1 process, batch b | {k} ranks × b | 1 process, batch {k}·b |")
    print("|---|---:|---:|---:|---:|")
    for n in norms:
        base = n[len("sync_"):] if n.startswith("sync_") else n
        for b in batches:
            print(f"| `{n}` | {b} | {cell(single.get((base, b), []))} | "
                  f"{cell(dist.get((n, b), []))} | {cell(single.get((base, k * b), []))} |")


if __name__ == "__main__":
    main()
