#!/usr/bin/env python3
"""Report of a small-batch stress test: reads <out>/results.jsonl (written by `normlab stress`)
and writes <out>/report.md, <out>/results.csv and figures in <out>/figures/ (PNG and SVG):
accuracy vs batch size per normalizer (mean ± std over seeds, log2 axis), the train/eval gap vs
batch size, and loss curves. Needs python3-matplotlib (Debian).

    python3 scripts/stress_report.py stress-out
"""
import csv
import json
import math
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a last line cut short by an interrupted run
    return rows


def mean_std(values):
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def cell(values, diverged, errors, total):
    m, s = mean_std(values)
    if m is None:
        return "error" if errors else ("diverged" if diverged else "—")
    text = f"{100 * m:.1f} ± {100 * s:.1f}"
    notes = []
    if diverged:
        notes.append(f"{diverged}/{total} diverged")
    if errors:
        notes.append(f"{errors}/{total} failed")
    return text + (f" ({', '.join(notes)})" if notes else "")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "stress-out"
    rows = load(os.path.join(out, "results.jsonl"))
    if not rows:
        sys.exit(f"stress_report: no results in {out}/results.jsonl")
    figures = os.path.join(out, "figures")
    os.makedirs(figures, exist_ok=True)

    # (workload, data, ranks) -> normalizer -> batch (per rank) -> list of results
    grid = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    order = []
    for r in rows:
        c = r["config"]
        key = (c["workload"], c["data"], c.get("ranks", 1))
        grid[key][c["normalizer"]][c["batch_size"]].append(r["result"])
        if c["normalizer"] not in order:
            order.append(c["normalizer"])

    with open(os.path.join(out, "results.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["workload", "data", "ranks", "normalizer", "batch_size", "global_batch",
                    "seed", "lr", "status",
                    "test_accuracy", "test_loss", "test_accuracy_train_mode", "train_eval_gap",
                    "final_train_loss", "examples_per_second", "wall_seconds", "commit", "message"])
        for r in rows:
            c, res = r["config"], r["result"]
            ranks = c.get("ranks", 1)
            w.writerow([c["workload"], c["data"], ranks, c["normalizer"], c["batch_size"],
                        c["batch_size"] * ranks, c["seed"],
                        res.get("lr"), res["status"], res["test_accuracy"], res["test_loss"],
                        res["test_accuracy_train_mode"], res["train_eval_gap"],
                        res["final_train_loss"], res["examples_per_second"],
                        res["wall_seconds"], r.get("meta", {}).get("commit", ""),
                        res.get("message", "")])

    meta = rows[-1].get("meta", {})
    md = ["# Small-batch stress test", "",
          f"{len(rows)} runs. Commit `{meta.get('commit', '?')}`, {meta.get('machine', '')}"
          + (f", {meta['blas']} kernels" if meta.get("blas") else "") + ".", "",
          f"Command: `{meta.get('command', '?')}`", "",
          "Test accuracy (%) in eval mode, mean ± std over seeds; **bold** is the best in its "
          "column. The second table is the accuracy with batch statistics (train mode, batches of "
          "the run's size) minus the eval-mode accuracy. Protocol: docs/stress-test.md.", ""]
    for (workload, data, ranks), by_norm in sorted(grid.items()):
        batches = sorted({b for per_b in by_norm.values() for b in per_b})
        # Data-parallel runs: b is each rank's batch, the global batch ranks·b.
        title = f"{workload} on {data}" + (f", {ranks} ranks" if ranks > 1 else "")
        blabel = (lambda b: f"b={b} ({ranks * b})") if ranks > 1 else (lambda b: f"b={b}")
        norms = [n for n in order if n in by_norm]

        def stats(norm, b, field):
            results = by_norm[norm].get(b, [])
            # A metric that could not be measured (e.g. train-mode accuracy when the last test
            # batch holds a single example) is null in the JSON and left out of the mean.
            ok = [x[field] for x in results if x["status"] == "ok" and x.get(field) is not None]
            return ok, sum(x["status"] == "diverged" for x in results), \
                sum(x["status"] == "error" for x in results), len(results)

        best = {}
        for b in batches:
            means = [(mean_std(stats(n, b, "test_accuracy")[0])[0] or -1, n) for n in norms]
            best[b] = max(means)[1] if means else None
        md += [f"## {title}", ""]
        if ranks > 1:
            md += [f"Data-parallel over {ranks} ranks: `b` is the batch of each rank, the global "
                   f"batch (in parentheses) {ranks}·b. `batch_norm` and `batch_renorm` normalize "
                   "each rank's batch (running statistics of rank 0, as PyTorch's "
                   "DistributedDataParallel keeps them); `sync_` variants normalize the global "
                   "batch. Train-mode evaluation uses global batches of the same size.", ""]
        md += ["| normalizer | " + " | ".join(blabel(b) for b in batches) + " |",
               "|---|" + "---:|" * len(batches)]
        for n in norms:
            cells = []
            for b in batches:
                text = cell(*stats(n, b, "test_accuracy"))
                cells.append(f"**{text}**" if best[b] == n and text[0].isdigit() else text)
            md.append(f"| `{n}` | " + " | ".join(cells) + " |")
        md += ["", "Train-mode minus eval-mode test accuracy (percentage points):", "",
               "| normalizer | " + " | ".join(blabel(b) for b in batches) + " |",
               "|---|" + "---:|" * len(batches)]
        for n in norms:
            md.append(f"| `{n}` | " + " | ".join(cell(*stats(n, b, "train_eval_gap"))
                                                  for b in batches) + " |")
        errors = sorted({x["message"] for per_b in by_norm.values() for res in per_b.values()
                         for x in res if x["status"] == "error"})
        if errors:
            md += ["", "Runs that could not train:", ""] + [f"* {e}" for e in errors]

        tag = f"{workload}_{data}" + (f"_{ranks}ranks" if ranks > 1 else "")
        for field, ylabel, name in (("test_accuracy", "test accuracy, eval mode", "accuracy"),
                                    ("train_eval_gap", "train-mode − eval-mode accuracy", "gap")):
            fig, ax = plt.subplots(figsize=(10, 4.5))
            for n in norms:
                xs, ys, es = [], [], []
                for b in batches:
                    m, s = mean_std(stats(n, b, field)[0])
                    if m is not None:
                        xs.append(b)
                        ys.append(100 * m)
                        es.append(100 * s)
                if xs:
                    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=n)
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches)
            ax.set_xticklabels([str(b) for b in batches])
            ax.set_xlabel("batch size per rank" if ranks > 1 else "batch size")
            ax.set_ylabel(ylabel + " (%)")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            # Outside the axes: inside, it hid the curves it names.
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
            fig.tight_layout()
            for ext in ("png", "svg"):
                fig.savefig(os.path.join(figures, f"{name}_{tag}.{ext}"), dpi=120)
            plt.close(fig)
            md += ["", f"![{name}](figures/{name}_{tag}.png)"]

        fig, axes = plt.subplots(1, 2, figsize=(14, 4), sharey=True)
        for ax, b in zip(axes, (batches[0], batches[-1])):
            for n in norms:
                curves = [x["loss_curve"] for x in by_norm[n].get(b, [])
                          if x["status"] == "ok" and x["loss_curve"]]
                if curves:
                    length = min(len(c) for c in curves)
                    avg = [sum(c[i] for c in curves) / len(curves) for i in range(length)]
                    ax.plot([(i + 1) / length for i in range(length)], avg, label=n)
            ax.set_title(f"{title}, batch {b}" + (" per rank" if ranks > 1 else ""))
            ax.set_xlabel("fraction of training")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("training loss")
        axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(os.path.join(figures, f"loss_{tag}.{ext}"), dpi=120)
        plt.close(fig)
        md += ["", f"![loss curves](figures/loss_{tag}.png)", ""]

    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print(f"report: {os.path.join(out, 'report.md')}")
    print(f"table:  {os.path.join(out, 'results.csv')}")
    print(f"figures: {figures}/")


if __name__ == "__main__":
    main()
