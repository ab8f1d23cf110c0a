#!/usr/bin/env python3
"""Turns the JSON of normalizer_bench, onednn_bench, pytorch_bench.py and torch_bench into
docs/benchmarks.md.

Every number in the page comes from these files; nothing is typed by hand. Usage (run.sh does
this): report.py --normlab a.json [--onednn b.json] [--pytorch c.json] [--pytorch-paired d.json]
--machine "..." --command "..." --out F [--data F.json]

--data also writes the run's data: the fields of those files that the page is made from, with the
machine and the command, in one JSON file beside the page (docs/benchmarks.json). The page is
made from exactly that data, so `report.py --from-data docs/benchmarks.json --out F` makes the
committed page again, byte for byte, on any machine (tests/benchmark_report_test.py checks it).
"""
import argparse
import gzip
import json
import os
import statistics
import sys
from collections import defaultdict

PASSES = ("fwd_train", "fwd_eval", "bwd")
SHAPES = ("mlp", "conv", "conv_small_batch", "conv_deep", "seq", "transformer")
SHAPE_TEXT = {"mlp": "(256, 1024)", "conv": "(32, 64, 56, 56)", "conv_small_batch": "(2, 64, 56, 56)",
              "conv_deep": "(8, 256, 14, 14)", "seq": "(1792, 512)", "transformer": "(4096, 768)"}
ONEDNN_LAYOUTS = ("onednn_plain", "onednn_blocked")
PAIRED = "paired_"
PYTORCH = ("pytorch",)
PLAIN = ("plain", "loop")  # the key prefix of the plain loops (plain_section)
TWO_PASSES = ("plain", "two_passes")  # the plain loop after a plain read of its inputs
# Layers whose sets span the batch: on (N, C) rows each set is a column down every row, whose
# statistics need the whole tensor read before any output is written.
ACROSS_BATCH = ("batch_norm", "batch_renorm", "batch_layer_norm")
ROW_SHAPES = ("mlp", "seq", "transformer")  # (N, C): each channel a column down every row
ACCURACY = "accuracy/"  # torch_bench's accuracy/<variant>/<shape>/<pass>/offset:<m> cases
ROOFLINE_TARGETS = {("batch_norm", "conv"), ("batch_norm", "transformer"),
                    ("layer_norm", "conv"), ("layer_norm", "transformer")}


def read_json(path):
    """A benchmark program's JSON document, from its file or as the run's data holds it (a dict)."""
    if isinstance(path, dict):
        return path
    # A program whose filter matched nothing (BENCH_FILTER) leaves an empty file.
    if not path or not os.path.exists(path) or os.path.getsize(path) == 0:
        return {}
    with open(path) as fh:
        return json.load(fh)


# What the run's data keeps of each benchmark entry: every field the page reads, and the
# programs' own checks and counters that a reader of the data would look for (the paired cases'
# two medians, the largest difference between the implementations' outputs, bandwidths).
ENTRY_FIELDS = ("name", "run_type", "aggregate_name", "error_occurred", "error_message",
                "real_time", "time_unit", "call_median_us", "roofline", "roofline_dram",
                "bytes_per_second", "paired_ratio", "normlab_median_us", "onednn_median_us",
                "pytorch_median_us", "max_abs_diff", "bandwidth_GBps", "bytes", "threads",
                "overhead", "examples_per_second", "normlab_max_error", "pytorch_max_error",
                "offset")
# ... and of each program's context: what the page reads and what describes the machine.
CONTEXT_FIELDS = ("date", "num_cpus", "mhz_per_cpu", "caches", "library_build_type",
                  "memory_locked", "onednn_blocked_layout", "planned_cache_mib",
                  "planned_cache_from", "chain_output_streamed")
# The implementations' lists of files, as main's arguments and the data's "inputs" name them.
INPUTS = ("normlab", "onednn", "pytorch", "pytorch_paired", "training")
DATA_FORMAT = 1


def kept_fields(document):
    """The part of one program's JSON document that the run's data keeps (ENTRY_FIELDS,
    CONTEXT_FIELDS)."""
    context = document.get("context", {})
    return {"context": {k: context[k] for k in CONTEXT_FIELDS if k in context},
            "benchmarks": [{k: e[k] for k in ENTRY_FIELDS if k in e}
                           for e in document.get("benchmarks", [])]}


class DataError(Exception):
    """A run's data file that cannot be read as one."""


def read_data(path):
    """The run's data that --data wrote: {"rounds", "machine", "command", "inputs": {impl: [doc]}}.
    Gzip-compressed if its name ends in .gz."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as fh:
            data = json.load(fh)
    except OSError as err:
        raise DataError(f"cannot read the benchmark data {path}: {err}") from err
    except (ValueError, EOFError) as err:
        raise DataError(f"{path} is not a complete JSON file of benchmark data "
                        f"(truncated or damaged?): {err}") from err
    if not isinstance(data, dict) or data.get("format") != DATA_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected benchmark data of format {DATA_FORMAT} (written by "
                        f"report.py --data), found format {found!r}")
    missing = [k for k in ("rounds", "machine", "command", "inputs") if k not in data]
    if missing or not isinstance(data["inputs"], dict) or not data["inputs"].get("normlab"):
        raise DataError(f"{path}: benchmark data without "
                        + (", ".join(missing) if missing else "normlab's results"))
    for impl, documents in data["inputs"].items():
        if impl not in INPUTS or not isinstance(documents, list) or not all(
                isinstance(d, dict) and isinstance(d.get("benchmarks"), list) for d in documents):
            raise DataError(f"{path}: inputs[{impl!r}] is not a list of benchmark results of one "
                            f"of {', '.join(INPUTS)}")
    return data


def write_data(path, rounds, machine, command, inputs):
    """The run's data, one benchmark entry per line (readable, and a diff between two runs shows
    the cases that changed)."""
    lines = ['{"format": %d, "rounds": %s, "machine": %s, "command": %s, "inputs": {'
             % (DATA_FORMAT, json.dumps(rounds), json.dumps(machine), json.dumps(command))]
    impls = [impl for impl in INPUTS if inputs.get(impl)]
    for i, impl in enumerate(impls):
        lines.append(f" {json.dumps(impl)}: [")
        for j, doc in enumerate(inputs[impl]):
            lines.append('  {"context": %s, "benchmarks": [' % json.dumps(doc["context"],
                                                                          sort_keys=True))
            entries = doc["benchmarks"]
            lines += ["   " + json.dumps(e) + ("," if k + 1 < len(entries) else "")
                      for k, e in enumerate(entries)]
            lines.append("  ]}" + ("," if j + 1 < len(inputs[impl]) else ""))
        lines.append(" ]" + ("," if i + 1 < len(impls) else ""))
    lines.append("}}")
    text = "\n".join(lines) + "\n"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt") as fh:
        fh.write(text)


def load(path):
    return read_json(path).get("benchmarks", [])


def load_context(path):
    return read_json(path).get("context", {})


def to_us(entry):
    """The median call time of a case (normlab, oneDNN: the counter call_median_us; PyTorch's
    script writes its median as real_time)."""
    if "call_median_us" in entry:
        return entry["call_median_us"]
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[entry.get("time_unit", "ns")]
    return entry["real_time"] * scale


def key(name):
    impl, variant, shape, pass_name = name.split("/")[:4]
    if impl == "chain":
        # chain/<variant>/<shape>/<pass>/layers:L/plan:P: the chain's length and cache plan
        # are part of the case.
        layers, plan = name.split("/")[4:6]
        return impl, variant, shape, (pass_name, int(layers.split(":")[1]), plan.split(":")[1])
    return impl, variant, shape, pass_name


def collect(entries):
    times, counters, triad = {}, {}, {}
    for e in entries:
        if e.get("run_type") == "aggregate" and e.get("aggregate_name") != "median":
            continue
        name = e["name"]
        if name.startswith(("triad/", "triad_streamed/")):
            kind, label, threads = name.split("/")[:3]
            triad[(kind, label, threads)] = (e.get("bandwidth_GBps"), e.get("bytes"))
            continue
        if name.startswith(ACCURACY):
            continue  # errors, not times (accuracy_section)
        if name.startswith("paired/"):
            # paired/<oneDNN or PyTorch case>: the peer's median over normlab's, timed in turn in
            # one process, kept among the times (per round, medians over rounds) as a ratio.
            impl, variant, shape, pass_name = name.split("/")[1:5]
            if e.get("paired_ratio"):
                times[(PAIRED + impl, variant, shape, pass_name)] = e["paired_ratio"]
            continue
        k = key(name)
        times[k] = to_us(e)
        if "roofline" in e:
            counters[k] = (e["roofline"], e.get("roofline_dram"))
    return times, counters, triad


def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def collect_rounds(paths):
    """collect() over the JSON of several rounds, each value the median over the rounds; and
    per timed case its spread, the slowest round's time over the fastest's (1.00 = every round
    the same)."""
    rounds = [collect(load(p)) for p in paths or []]
    merged = []
    spread = {}
    # A round's cases may be split over several files (one per group of cases): per round, each
    # case's time by the index of the file that holds it, in file order.
    per_file = [r[0] for r in rounds]
    for part in range(3):
        keys = {k for r in rounds for k in r[part]}
        out = {}
        for k in keys:
            values = [r[part][k] for r in rounds if k in r[part]]
            if isinstance(values[0], tuple):
                out[k] = tuple(median_of(v[i] for v in values) for i in range(len(values[0])))
            else:
                out[k] = median_of(values)
                timed = [v for v in values if v]
                if part == 0 and len(timed) > 1:
                    spread[k] = max(timed) / min(timed)
        merged.append(out)
    # The fastest of each triad over the rounds: the most the machine was seen to move there.
    peaks = {k: max(v[0] for v in (r[2].get(k) for r in rounds) if v and v[0])
             for k in merged[2] if merged[2][k][0]}
    return merged[0], merged[1], merged[2], len(rounds), spread, per_file, peaks


def round_times(per_file, rounds):
    """Each case's time in every round, from one implementation's files in run order (run.sh
    writes round 1's files first, then round 2's, each round split the same way)."""
    out = defaultdict(dict)
    per_round = max(1, len(per_file) // max(1, rounds))
    for index, times in enumerate(per_file):
        for k, value in times.items():
            if value:
                out[k][index // per_round] = value
    return out


def rounds_met(by_round, ours_key, peer_key, factor):
    """In how many rounds the peer took at least factor × our time of the same round (each
    round times both one right after the other), and in how many rounds both were timed."""
    ours, peer = by_round.get(ours_key, {}), by_round.get(peer_key, {})
    common = [r for r in ours if r in peer]
    return sum(peer[r] >= factor * ours[r] for r in common), len(common)


def paired_ratio(values, variant, shape, pass_name, impls=ONEDNN_LAYOUTS):
    """The paired ratio of a case against a peer (the peer's time over ours, each of its impls
    timed in turn with normlab in one process: oneDNN's two layouts, or PyTorch): the smaller over
    the impls, i.e. against the one that did best against us. values maps (paired_<impl>, variant,
    shape, pass) to a ratio."""
    found = [values.get((PAIRED + impl, variant, shape, pass_name)) for impl in impls]
    found = [v for v in found if v]
    return min(found) if found else None


def paired_rounds_met(by_round, variant, shape, pass_name, impls=ONEDNN_LAYOUTS, bar=1.0):
    """In how many rounds the paired ratio (the smaller over the impls timed in that round) was
    at least bar, and in how many rounds it was timed."""
    per_impl = [by_round.get((PAIRED + impl, variant, shape, pass_name), {}) for impl in impls]
    timed = sorted({r for values in per_impl for r in values})
    met = sum(min(values[r] for values in per_impl if r in values) >= bar for r in timed)
    return met, len(timed)


def fastest_bandwidth(triad, peaks, shape, pass_name, threads):
    """The most this machine was measured to move at the working set of a pass, bytes/µs: the
    faster triad (normal or streaming stores) at that size and thread count in its fastest
    round (peaks), and those bytes (triad)."""
    label = f"{shape}_{'bwd' if pass_name == 'bwd' else 'fwd'}"
    best, size = None, None
    for kind in ("triad", "triad_streamed"):
        k = (kind, label, f"threads:{threads}")
        if peaks.get(k):
            best = max(best or 0.0, peaks[k] * 1e3)
            size = triad[k][1]
    return best, size


def reach(triad, peaks, shape, pass_name, threads, target_us):
    """What a time of target_us asks of the machine: its minimal traffic over that time as a
    percentage of the fastest bandwidth measured at its working set (over 100: out of reach)."""
    best, size = fastest_bandwidth(triad, peaks, shape, pass_name, threads)
    if not best or not size or not target_us:
        return None
    return 100 * size / target_us / best


def fmt_us(v):
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def ratio(other, ours):
    if other is None or ours is None:
        return "—"
    return f"{other / ours:.2f}×"


def main():
    ap = argparse.ArgumentParser()
    # JSON files of every round for each implementation (a round may be split into several
    # files, one per group of cases); each case's value is its median over the rounds.
    ap.add_argument("--rounds", type=int, help="number of rounds (default: one per file)")
    ap.add_argument("--normlab", nargs="+")
    ap.add_argument("--onednn", nargs="*")
    ap.add_argument("--pytorch", nargs="*")
    ap.add_argument("--pytorch-paired", nargs="*",
                    help="torch_bench JSON of every round: PyTorch timed in turn with normlab")
    ap.add_argument("--machine")
    ap.add_argument("--command")
    ap.add_argument("--training", nargs="*",
                    help="training_bench JSON of every round: whole-model examples/s")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", help="also write the run's data (the kept fields of every input, "
                    "the machine and the command) to this JSON file (.gz: compressed)")
    ap.add_argument("--from-data", metavar="FILE",
                    help="make the page from a run's data (written by --data) instead of files")
    args = ap.parse_args()
    if args.from_data:
        # The run's data names the machine, the command and every input itself.
        if args.normlab or args.onednn or args.pytorch or args.pytorch_paired or args.training:
            ap.error("--from-data takes the place of --normlab, --onednn, --pytorch, "
                     "--pytorch-paired and --training")
        try:
            data = read_data(args.from_data)
        except DataError as err:
            sys.exit(f"report.py: {err}")
        args.rounds, args.machine, args.command = data["rounds"], data["machine"], data["command"]
        for impl in INPUTS:
            setattr(args, impl, data["inputs"].get(impl) or None)
    else:
        missing = [flag for flag, value in (("--normlab", args.normlab),
                                            ("--machine", args.machine),
                                            ("--command", args.command)) if value is None]
        if missing:
            ap.error("the following arguments are required: " + ", ".join(missing)
                     + " (or --from-data)")
        # The page is made from the kept fields only, as it would be from the written data.
        for impl in INPUTS:
            paths = getattr(args, impl)
            setattr(args, impl, [kept_fields(read_json(p)) for p in paths] if paths else None)
        if args.data:
            write_data(args.data, args.rounds, args.machine, args.command,
                       {impl: getattr(args, impl) for impl in INPUTS})

    times, counters, triad, files, spread, per_file, peaks = collect_rounds(args.normlab)
    rounds = args.rounds or files
    by_round = round_times(per_file, rounds)
    for paths in (args.onednn, args.pytorch, args.pytorch_paired):
        t, c, _, _, _, peer_files, _ = collect_rounds(paths)
        times.update(t)
        counters.update(c)
        for k, values in round_times(peer_files, rounds).items():
            by_round[k] = values

    variants = sorted({k[1] for k in times if k[0] == "normlab"})
    # The data file by its name alone, so that the page made again from a copy elsewhere is the
    # same page.
    data_name = os.path.basename(args.from_data or args.data or "")
    data_line = (f" The run's data is in `{data_name}` beside this page, from which `python3 "
                 "benchmarks/report.py --from-data <that file> --out page.md` makes the page "
                 "again." if data_name else "")
    blocked_layout = load_context((args.onednn or [None])[0]).get("onednn_blocked_layout",
                                                                 "nChw16c")
    locked = load_context(args.normlab[0]).get("memory_locked") == "yes"
    lines = ["# Benchmarks: normlab against oneDNN, PyTorch and the memory-bandwidth roofline", "",
             "Generated by `benchmarks/report.py` from one run of `benchmarks/run.sh`; do not "
             "edit by hand." + data_line, "", "```", args.machine.strip(), "```", "",
             f"Command: `{args.command}`", "",
             f"Times are in microseconds, float32, OpenMP/intra-op threads as listed above: the "
             f"median over {rounds} round{'s' if rounds != 1 else ''}; in each round every "
             "shape is timed by normlab, oneDNN and PyTorch one right after the other, so that "
             "drift of the machine over minutes reaches all three alike (within a round: the "
             "median of each call's wall-clock time, over at least 0.1 s of calls, for all three; "
             "a mean would let the few calls that the machine preempts weigh as much as hundreds "
             "of undisturbed ones). "
             "`vs X` is X's time divided by ours (above 1: we are faster). `fwd_eval` is "
             "inference: no gradient bookkeeping, batch norm with its running statistics, the "
             "other layers with the statistics of their input. oneDNN is timed in the "
             "plain channel-first layout our users pass and in its blocked "
             f"`{blocked_layout}` layout (4-D batch norm only; the block matches this machine's "
             "vector width); `vs oneDNN` uses the faster of the two. `oneDNN paired` is that "
             "ratio again from oneDNN and normlab timed in turn in one process, in blocks of "
             "four calls in the order ABBA (the `paired/` cases of `onednn_bench`), the smaller "
             "over the two layouts: there both meet the same drift of the machine, where the "
             "other columns come from separate programs run one after the other, minutes apart on a shared "
             "machine. `PyTorch paired` is the same for PyTorch: its kernels called through its "
             "C++ API (Debian's libtorch-dev, the library under python3-torch) with the ops, "
             "flags and protocol of the Python script, timed in turn with normlab in one process "
             "(`torch_bench`), without the interpreter's overhead per call; like the script, "
             "`torch_bench` does not lock its memory. The first call after each switch is not "
             "counted there: it meets the caches as the other implementation left them (when "
             "every call followed the other's, that cost fell on the leaner of the two: "
             "normlab's BatchNorm training forward on (1792, 512) took 1.5× its time alone, "
             "PyTorch's 1.1×). Paired times still run somewhat above the single-program ones "
             "(median per round, then over the rounds, as everywhere). "
             "oneDNN's layer norm "
             "normalizes the last dimension, so 4-D shapes are given to it as (N, C·H·W) rows. "
             "PyTorch runs the functional ops (`F.batch_norm`, `F.layer_norm`/`F.group_norm(1)`, "
             "`F.instance_norm`, `F.group_norm`, and RMSNorm composed of elementwise ops, as 1.13 "
             "has no RMSNorm kernel); its backward is `torch.autograd.grad` for x, γ, β. "
             "`spread` is the slowest round of normlab over its fastest: the run-to-run noise "
             "of this machine, against which a ratio near 1.0× (or 1.5×) should be read.", "",
             "Roofline: the minimal traffic of the pass (forward reads x and writes y; backward "
             "reads dy and x and writes dx) divided by the median call time, as a fraction of "
             "the triad bandwidth measured in the same run at the same working-set size "
             "(`roofline`), and at 1.5 GB, far beyond the caches (`DRAM`). Input: every "
             "implementation's training forward is handed its input anew before each call, "
             "written (untimed) by the same threads, each a contiguous share, as a previous "
             "layer would write it, and every backward follows an untimed training forward on "
             "such an input; inference reads the same input call after call. normlab's training "
             "forward keeps the input it is handed for backward instead of writing x̂, as a "
             "network's layers hand it over (GroupNorm on (N, C) still writes x̂, which this "
             "minimal count does not include). "
             + ("normlab's and oneDNN's benchmark programs locked their memory (`mlockall`), so "
                "the machine's background reclaim could not page out a freed tensor that the next "
                "call then faults in again; the PyTorch script does not lock (locked, its "
                "allocations were up to 1.5× slower here)." if locked else
                "The benchmark programs could not lock their memory (`mlockall` needs root or a "
                "high `ulimit -l`): on a machine that pages out cold memory, the times include "
                "the page faults of tensors reused after a while."),
             ""]

    summary = defaultdict(lambda: [0, 0])
    misses = defaultdict(list)
    unreachable = defaultdict(int)
    two_passes_misses = 0  # BatchNorm's misses against PyTorch on rows beside the two passes
    threads = thread_count(args.machine)

    def count_paired(target, impls, bar, variant, shape, p, case):
        """A case's paired ratio against a peer's impls (paired_ratio), counted against its bar
        and listed as a miss with the rounds in which it held; None where it was not paired."""
        value = paired_ratio(times, variant, shape, p, impls)
        if value is None:
            return None
        summary[target][1] += 1
        summary[target][0] += value >= bar
        if value < bar:
            won, timed = paired_rounds_met(by_round, variant, shape, p, impls, bar)
            misses[target].append(f"{case} ({value:.2f}×"
                                  + (f"; met in {won} of {timed} rounds" if timed > 1 else "")
                                  + ")")
        return value

    for variant in variants:
        lines += [f"## `{variant}`", "",
                  "| shape | pass | normlab | spread | oneDNN plain | oneDNN blocked | PyTorch | "
                  "vs oneDNN | oneDNN paired | vs PyTorch | PyTorch paired | roofline | DRAM |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for shape in SHAPES:
            for p in PASSES:
                ours = times.get(("normlab", variant, shape, p))
                if ours is None:
                    continue
                plain = times.get(("onednn_plain", variant, shape, p))
                blocked = times.get(("onednn_blocked", variant, shape, p))
                # The faster layout is the bar (the plain one on a tie), and its case the one
                # whose rounds a miss is counted against.
                onednn, onednn_impl = min(
                    [(t, impl) for impl, t in (("onednn_plain", plain), ("onednn_blocked", blocked))
                     if t is not None], key=lambda c: c[0], default=(None, None))
                torch_t = times.get(("pytorch", variant, shape, p))
                roof, dram = counters.get(("normlab", variant, shape, p), (None, None))
                case = f"{variant} {shape} {p}"
                ours_key = ("normlab", variant, shape, p)
                if onednn is not None:
                    summary["oneDNN"][1] += 1
                    summary["oneDNN"][0] += onednn >= ours
                    if onednn < ours:
                        won, timed = rounds_met(by_round, ours_key,
                                                (onednn_impl, variant, shape, p), 1.0)
                        misses["oneDNN"].append(
                            f"{case} ({ratio(onednn, ours)}"
                            + (f"; met in {won} of {timed} rounds" if timed > 1 else "") + ")")
                paired = count_paired("paired", ONEDNN_LAYOUTS, 1.0, variant, shape, p, case)
                if torch_t is not None:
                    summary["PyTorch"][1] += 1
                    summary["PyTorch"][0] += torch_t >= 1.5 * ours
                    if torch_t < 1.5 * ours:
                        needs = reach(triad, peaks, shape, p, threads, torch_t / 1.5)
                        beyond = needs is not None and needs > 100
                        unreachable["PyTorch"] += beyond
                        won, timed = rounds_met(by_round, ours_key, ("pytorch", variant, shape, p),
                                                1.5)
                        # On rows, the best a pass that reads its input twice could do against
                        # PyTorch's time: PyTorch's over the two plain passes'.
                        two = (times.get(TWO_PASSES + (shape, p))
                               if variant in ACROSS_BATCH and shape in ROW_SHAPES else None)
                        if two:
                            two_passes_misses += 1
                            unreachable["two passes"] += torch_t < 1.5 * two
                        misses["PyTorch"].append(
                            f"{case} ({ratio(torch_t, ours)}"
                            + (f"; met in {won} of {timed} rounds" if timed > 1 else "")
                            + ("" if needs is None else f"; 1.5× needs {needs:.0f}%")
                            + (", out of reach" if beyond else "")
                            + (f"; two plain passes {ratio(torch_t, two)}" if two else "") + ")")
                torch_paired = count_paired("PyTorch paired", PYTORCH, 1.5, variant, shape, p,
                                            case)
                if (variant, shape) in ROOFLINE_TARGETS and p != "fwd_eval" and roof is not None:
                    summary["roofline"][1] += 1
                    summary["roofline"][0] += roof >= 0.7
                    if roof < 0.7:
                        plain_roof = counters.get(PLAIN + (shape, p), (None, None))[0]
                        two_roof = (counters.get(TWO_PASSES + (shape, p), (None, None))[0]
                                    if variant in ACROSS_BATCH else None)
                        misses["roofline"].append(
                            f"{case} ({100 * roof:.0f}%"
                            + ("" if plain_roof is None else
                               f"; the plain loop {100 * plain_roof:.0f}%")
                            + ("" if two_roof is None else
                               f", two plain passes {100 * two_roof:.0f}%") + ")")
                        unreachable["roofline"] += plain_roof is not None and plain_roof < 0.7
                k = ours_key
                lines.append(
                    f"| {shape} {SHAPE_TEXT[shape]} | {p} | {fmt_us(ours)} | "
                    f"{f'{spread[k]:.2f}×' if k in spread else '—'} | {fmt_us(plain)} | "
                    f"{fmt_us(blocked)} | {fmt_us(torch_t)} | {ratio(onednn, ours)} | "
                    f"{'—' if paired is None else f'{paired:.2f}×'} | {ratio(torch_t, ours)} | "
                    f"{'—' if torch_paired is None else f'{torch_paired:.2f}×'} | "
                    f"{'—' if roof is None else f'{100 * roof:.0f}%'} | "
                    f"{'—' if dram is None else f'{100 * dram:.0f}%'} |")
        lines.append("")

    head = ["## Summary against the targets", "",
            "| target | met |", "|---|---|",
            f"| at least as fast as oneDNN (faster layout) where oneDNN has the operation | "
            f"{summary['oneDNN'][0]} of {summary['oneDNN'][1]} |"]
    if summary["paired"][1]:
        head.append("| the same, timed in turn with oneDNN in one process (`oneDNN paired`) | "
                    f"{summary['paired'][0]} of {summary['paired'][1]} |")
    head.append(f"| at least 1.5× faster than PyTorch 1.13 | {summary['PyTorch'][0]} of "
                f"{summary['PyTorch'][1]} |")
    if summary["PyTorch paired"][1]:
        head.append("| the same, timed in turn with PyTorch's C++ API in one process "
                    f"(`PyTorch paired`) | {summary['PyTorch paired'][0]} of "
                    f"{summary['PyTorch paired'][1]} |")
    head += [f"| ≥ 70% of roofline, BN/LN training forward and backward on conv and "
             f"transformer | {summary['roofline'][0]} of {summary['roofline'][1]} |", ""]
    for target, label in (("oneDNN", "slower than oneDNN"),
                          ("paired", "slower than oneDNN timed in turn in one process"),
                          ("PyTorch", "less than 1.5× faster than PyTorch"),
                          ("PyTorch paired",
                           "less than 1.5× faster than PyTorch timed in turn in one process"),
                          ("roofline", "below 70% of roofline")):
        if misses[target]:
            head += [f"Missed, {label}: " + "; ".join(misses[target]) + ".", ""]
    if misses["oneDNN"] or misses["paired"] or misses["PyTorch"] or misses["PyTorch paired"]:
        head += ["`met in k of n rounds`: in how many rounds the target held between the two "
                 "times of that round, which were taken one right after the other; a miss that "
                 "held in some rounds is within this machine's noise.", ""]
    if misses["PyTorch"]:
        head += ["For each PyTorch miss, `1.5× needs` is the pass's minimal traffic, moved in "
                 "two thirds of PyTorch's time, as a percentage of the fastest bandwidth measured "
                 "at its working set in this run: the faster of the triad with normal stores and "
                 "the triad with streaming stores, in its fastest round (the table below gives "
                 "medians over the rounds). Over 100% no implementation of "
                 "that pass can reach 1.5× on this machine "
                 f"({unreachable['PyTorch']} of {len(misses['PyTorch'])} misses here)."
                 + (" For BatchNorm's training forward and backward on rows, whose statistics "
                    "over the batch need the whole input read before any output is written, "
                    "`two plain passes` is PyTorch's time over that of the plain loop after a "
                    "plain read of its inputs (the table of plain loops below): under 1.5× a "
                    "pass that reads its input twice would have to outrun these plain loops to "
                    "reach the target "
                    f"({unreachable['two passes']} of {two_passes_misses} such "
                    "misses here)." if two_passes_misses else ""), ""]
    if misses["roofline"]:
        head += ["For each roofline miss, `the plain loop` is the fraction of roofline that the "
                 "plainest loop moving the same minimal traffic reached, timed the same way "
                 "(the table of plain loops below); under 70% the target asks more of the pass "
                 "than such a loop gets from this machine "
                 f"({unreachable['roofline']} of {len(misses['roofline'])} misses here). "
                 "For BatchNorm, `two plain passes` is the same loop after a plain read of its "
                 "inputs, in one call: what a pass that reads its input twice gets, as "
                 "BatchNorm's statistics over the batch make it on rows, where each channel is "
                 "a column down the whole tensor.", ""]
    triad_lines = ["## Measured bandwidth (triad, GB/s)", "",
                   "a = b + 3·c over three arrays that together take the working set, the best of "
                   "several sweeps; `streamed` writes a with stores that bypass the caches (one per "
                   "64-byte line where the CPU has AVX-512, as normlab's kernels stream), which "
                   "saves reading each line of a before writing it (faster from the point where "
                   "the working set leaves the per-core caches here). The roofline columns above "
                   "use the triad with normal stores, as normlab's kernels keep outputs that fit "
                   "in half the last-level cache there, for the layer that reads them next.", "",
                   "| working set | bytes | 1 thread | 2 threads | streamed, 1 thread | "
                   "streamed, 2 threads |", "|---|---:|---:|---:|---:|---:|"]

    def gbps(kind, label, n):
        value = triad.get((kind, label, f"threads:{n}"), (None, None))[0]
        return "—" if value is None else f"{value:.1f}"

    for label in sorted({k[1] for k in triad}):
        size = next((v[1] for k, v in triad.items() if k[1] == label and v[1]), None)
        triad_lines.append(
            f"| {label} | {'—' if size is None else f'{size / 1e6:,.1f} MB'} | "
            f"{gbps('triad', label, 1)} | {gbps('triad', label, 2)} | "
            f"{gbps('triad_streamed', label, 1)} | {gbps('triad_streamed', label, 2)} |")
    triad_lines.append("")
    triad_lines += plain_section(times, counters)
    insert_at = lines.index(f"## `{variants[0]}`") if variants else len(lines)
    lines[insert_at:insert_at] = head + triad_lines
    lines += accuracy_section(args.pytorch_paired)
    context = load_context(args.normlab[0])
    planned, streamed = context.get("planned_cache_mib"), context.get("chain_output_streamed")
    lines += chain_section(times, int(planned) if planned else None,
                           streamed == "1" if streamed in ("0", "1") else None,
                           context.get("planned_cache_from", "detected"))
    if args.training:
        lines += training_section([load(path) for path in args.training])
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def plain_section(times, counters):
    """The plain loops (plain/loop/<shape>/<pass> of normalizer_bench): each pass's minimal
    traffic moved by the plainest loop, timed as the layers are; their roofline fractions, and
    BatchNorm's and LayerNorm's times over theirs."""
    shapes = [s for s in SHAPES if any(times.get(PLAIN + (s, p)) for p in PASSES)]
    if not shapes:
        return []
    layers = ("batch_norm", "layer_norm")
    two = any(k[:2] == TWO_PASSES for k in times)
    out = ["## Plain loops", "",
           "The plainest loop that moves a pass's minimal traffic, `y = 2·x + 1` for the "
           "forwards and `dx = dy + 2·x` for the backward, each thread a contiguous share, timed "
           "as the layers are (`plain/loop/` in `normalizer_bench`): its input written anew by "
           "the threads before each call of a training forward or backward, its output "
           "allocated in the call, the median call time. A layer's pass also takes statistics: "
           "its time over the loop's is what its numerics and order of work cost over moving "
           "the data, and the loop's roofline fraction is what this machine gives a pass under "
           "this protocol."
           + (" `two passes` is the same loop after a plain read of its inputs in the same call "
              "(`plain/two_passes/`: the sum of x, or of dy·x, each thread its share from the "
              "end back, so that the loop starts on the values read last), its roofline "
              "fraction counted with the same minimal traffic: what a pass gets that has to read "
              "its input twice, as BatchNorm's statistics over the batch make it wherever a "
              "channel's values do not fit in a core's cache together (on rows, each channel is "
              "a column down the whole tensor)." if two else ""), "",
           "| shape | pass | plain loop | roofline | DRAM | "
           + ("two passes | roofline | " if two else "")
           + " | ".join(f"{v} / plain" for v in layers)
           + (" | batch_norm / two passes" if two else "") + " |",
           "|---|---|---:|---:|---:|" + "---:|" * (len(layers) + (3 if two else 0))]

    def percent(value):
        return "—" if value is None else f"{100 * value:.0f}%"

    for shape in shapes:
        for p in PASSES:
            t = times.get(PLAIN + (shape, p))
            if t is None:
                continue
            roof, dram = counters.get(PLAIN + (shape, p), (None, None))
            cells = [ratio(times.get(("normlab", v, shape, p)), t) for v in layers]
            if two:
                t2 = times.get(TWO_PASSES + (shape, p))
                cells = [fmt_us(t2), percent(counters.get(TWO_PASSES + (shape, p),
                                                          (None, None))[0])] + cells
                cells.append(ratio(times.get(("normlab", "batch_norm", shape, p)), t2))
            out.append(f"| {shape} {SHAPE_TEXT[shape]} | {p} | {fmt_us(t)} | {percent(roof)} | "
                       f"{percent(dram)} | " + " | ".join(cells) + " |")
    return out + [""]


def accuracy_section(documents):
    """The accuracy cases of torch_bench (accuracy/<variant>/<shape>/<pass>/offset:<m>): each
    implementation's largest error in the training forward or backward against PyTorch in
    float64, the median over the rounds (the cases are deterministic; a round that differs shows
    in the median only)."""
    errors = defaultdict(lambda: ([], []))
    for doc in documents or []:
        for e in load(doc):
            if not e["name"].startswith(ACCURACY) or e.get("error_occurred"):
                continue
            if "normlab_max_error" not in e or "pytorch_max_error" not in e:
                continue
            variant, shape, pass_name, offset = e["name"].split("/")[1:5]
            ours, theirs = errors[(variant, shape, pass_name, int(offset.split(":")[1]))]
            ours.append(e["normlab_max_error"])
            theirs.append(e["pytorch_max_error"])
    if not errors:
        return []
    out = ["## Accuracy beside speed", "",
           "The largest absolute difference between each implementation's output in training "
           "(float32, batch statistics, γ = 1, β = 0; y of the forward, dx of the backward for "
           "the suite's dy) and PyTorch's in float64 on the same float32 input (`accuracy/` in "
           "`torch_bench`): the suite's input (normal, mean 1, standard deviation 2), and the "
           "same input plus 100, as activations far from zero mean are. y is of order 1 and dx "
           "of order 1/σ = 0.5, so these are errors relative to their scale. float32's "
           "spacing is 1.2e-07 near 1 and 7.6e-06 near 100: an output formed as (x − μ)/σ in "
           "float32, μ rounded to float32, is off by up to half that spacing over σ (1.9e-06 "
           "at x + 100, σ = 2) however μ was summed, unless that rounding is taken into β, "
           "as normlab's BatchNorm and Batch Renormalization do from commit 9165eba on, its "
           "LayerNorm, InstanceNorm and GroupNorm on feature maps from ba95705 on (where γ and "
           "β are one value per run of a set, it costs a value per channel, or per sample and "
           "channel) and its LayerNorm and GroupNorm on rows from a01f551 on (as an offset of "
           "x̂, an addition per value; docs/design.md, \"Precision\"), in their backward too "
           "from 0d92dd4 on (the offset folded into each set's coefficients). normlab "
           "accumulates the "
           "statistics in "
           "double, from sums shifted by the mean of each set's first values (docs/design.md, "
           "\"Precision\"): what its column "
           "sums cost BatchNorm on (N, C) rows in time buys these digits. GroupNorm's sets on "
           "rows are C/32 values (16 to 32 here), whose own σ can be well under 2, and that "
           "floor grows as 1/σ of the set (where it is not taken into the output). RMSNorm does not center: at x + 100 every output is "
           "near 1 and dx of order 1/100, so neither implementation loses digits there; its "
           "PyTorch column is the documented formula composed of float32 ops, as "
           "`pytorch_bench.py` times it (torch.nn.RMSNorm arrived after 1.13). The cases are "
           "computed once per round, not timed.", "",
           "| layer | shape | pass | input | normlab | PyTorch | PyTorch / normlab |",
           "|---|---|---|---|---:|---:|---:|"]
    order = {s: i for i, s in enumerate(SHAPES)}
    passes = {p: i for i, p in enumerate(PASSES)}
    for key in sorted(errors, key=lambda k: (k[0], order.get(k[1], 99), k[1],
                                             passes.get(k[2], 99), k[2], k[3])):
        variant, shape, pass_name, offset = key
        ours, theirs = (statistics.median(v) for v in errors[key])
        ratio_cell = f"{theirs / ours:.1f}×" if ours > 0 else "—"
        out.append(f"| `{variant}` | {shape} {SHAPE_TEXT.get(shape, '')} | {pass_name} | "
                   f"{'x + ' + str(offset) if offset else 'x'} | {ours:.2e} | {theirs:.2e} | "
                   f"{ratio_cell} |")
    return out + [""]


def chain_section(times, planned_mib=None, streamed_here=None, planned_from="detected"):
    """Per-layer times of chains of inference layers with outputs kept in the cache (the kernels
    planning for a 1 GiB cache) or streamed (planning for 32 MiB); planned_mib, the cache the
    kernels plan for on this machine, and streamed_here, whether under that plan they stream the
    chains' outputs (as normalizer_bench asked the library), say which of the two its layers
    take; planned_from, "detected" or the environment variable that set the plan."""
    chains = {k: v for k, v in times.items() if k[0] == "chain" and v}
    if not chains:
        return []
    here = ""
    if planned_mib and streamed_here is not None:
        source = ("detected" if planned_from == "detected"
                  else f"set by `{planned_from}`")
        here = (f" Here the kernels plan for the {planned_mib:,} MiB last-level cache {source}, "
                f"under which a layer on this shape {'streams' if streamed_here else 'keeps'} its "
                "output.")
    out = ["## Outputs kept in the cache or streamed", "",
           "normlab's kernels write outputs with normal stores, which keep them in the cache, "
           "while they fit in half the last-level cache, and with streaming stores, which send "
           "them to memory, from there on. A streamed output costs its pass less (no read of "
           "each destination line before it is written) and the layer that reads it next more "
           "(it comes from memory). Below: the time per layer of a chain of BatchNorm layers "
           "in inference, each reading the output of the one before (`chain/` in "
           "`normalizer_bench`), with the kernels planning for a 1 GiB cache (outputs of this "
           "size kept) and for 32 MiB (streamed), medians over the rounds." + here, "",
           "| layers | shape | µs per layer, kept (1 GiB plan) | µs per layer, streamed "
           "(32 MiB plan) | streamed / kept |", "|---:|---|---:|---:|---:|"]
    for variant, shape, layers in sorted({(k[1], k[2], k[3][1]) for k in chains},
                                         key=lambda t: (t[0], t[1], t[2])):
        kept = chains.get(("chain", variant, shape, ("fwd_eval", layers, "kept")))
        streamed = chains.get(("chain", variant, shape, ("fwd_eval", layers, "streamed")))
        out.append(f"| {layers} | {variant} {shape} {SHAPE_TEXT.get(shape, '')} | "
                   f"{fmt_us(kept)} | {fmt_us(streamed)} | "
                   f"{'—' if not kept or not streamed else f'{streamed / kept:.2f}×'} |")
    return out + [""]


def thread_count(machine):
    """The thread count run.sh writes into the machine block ("threads: 2   commit: ...")."""
    for line in machine.splitlines():
        if line.startswith("threads:"):
            return int(line.split()[1])
    return 1


def training_section(rounds):
    """Examples/s of whole-model training per workload and normalizer, the median over the rounds
    (each round's JSON entries in a list), its spread, and the overhead of each normalizer
    relative to `identity` (the same network without normalization): from the two trained in turn
    in one process (training_bench's `paired_overhead/<workload>/<variant>`, the median over the
    rounds and its range) where the run has those cases, otherwise from the medians."""
    per_round = defaultdict(list)
    paired = defaultdict(list)
    for entries in rounds:
        for e in entries:
            if e.get("run_type") == "aggregate":
                continue
            parts = e["name"].split("/")
            if parts[0] == "paired_overhead" and "overhead" in e and not e.get("error_occurred"):
                paired[(parts[1], parts[2])].append(e["overhead"])
            elif "examples_per_second" in e:
                per_round[(parts[0], parts[1])].append(e["examples_per_second"])
    if not per_round:
        return []
    rates = {k: statistics.median(v) for k, v in per_round.items()}
    spread = {k: max(v) / min(v) for k, v in per_round.items() if len(v) > 1 and min(v) > 0}
    n_rounds = max(len(v) for v in per_round.values())
    workloads = sorted({w for w, _ in rates})
    variants = sorted({v for _, v in rates})

    def network(workload):
        """The network of an epoch case (`cnn_epoch_6000` -> `cnn`), as the paired cases name it."""
        return workload.split("_")[0]

    def percent(fraction):
        """+4, -3, and +0 for what rounds to zero from either side (not -0)."""
        return f"{int(round(100 * fraction)):+d}"

    def overhead(w, v):
        if v == "identity":
            return "+0%"
        runs = paired.get((network(w), v))
        if runs:
            cell = f"{percent(statistics.median(runs))}%"
            return cell + (f" ({percent(min(runs))} to {percent(max(runs))})"
                           if len(runs) > 1 else "")
        r, base = rates.get((w, v)), rates.get((w, "identity"))
        if paired or r is None or base is None:
            return "—"
        return f"{percent(base / r - 1)}%"

    if paired:
        n_paired = max(len(v) for v in paired.values())
        how = ("Overhead is the time per training example with the normalizer over that of "
               "`identity` on the same network (whose convolutions and linear layers then have "
               "biases, where a normalizer's β takes their place), minus one, the two trained in "
               "turn in one process "
               "(`paired_overhead/` in training_bench: the same seed and data, an epoch of a slice "
               "at a time, 40-100 ms each, in the order identity, normalizer, normalizer, identity, "
               "eight times; the median of those quadruples' ratios), "
               + (f"the median over {n_paired} rounds, in brackets the lowest and highest round. "
                  if n_paired > 1 else "one round. ")
               + "Epochs of whole networks timed one after the other in one process differ by "
               "more than the normalizers do on this machine: a process ran the MLP's epoch in "
               "either ~0.72 or ~1.0 s, whichever normalizer it trained.")
    else:
        how = ("Overhead is the time per example relative to `identity` on the same network, from "
               "the medians.")
    out = ["## Whole-model training speed", "",
           "Training examples per second (forward, backward, SGD step; training steps only) of "
           "`benchmarks/training_bench.cpp`: `mlp_epoch` is one epoch of the BN paper's MLP on "
           "Fashion-MNIST at batch 60, `cnn_epoch_6000` one pass of the small CNN over 6000 "
           "examples at batch 32, `lstm_epoch_2000` one pass of the row-by-row LSTM (hidden 128) "
           "over 2000 examples at batch 32. "
           + (f"The median over {n_rounds} rounds (one run of every case per round, after the "
              "round's shapes); `spread` is the fastest round over the slowest. "
              if n_rounds > 1 else "One run of every case. ")
           + how, "",
           "| normalizer | " + " | ".join(f"{w} ex/s | spread | overhead" for w in workloads)
           + " |", "|---|" + "---:|---:|---:|" * len(workloads)]
    for v in variants:
        cells = []
        for w in workloads:
            r = rates.get((w, v))
            cells.append("—" if r is None else f"{r:,.0f}")
            cells.append(f"{spread[(w, v)]:.2f}×" if (w, v) in spread else "—")
            cells.append("—" if r is None else overhead(w, v))
        out.append(f"| `{v}` | " + " | ".join(cells) + " |")
    return out + [""]


if __name__ == "__main__":
    main()
