#!/usr/bin/env python3
"""Checks benchmarks/report.py on small hand-made benchmark JSON: which time of a case it takes,
the medians and spreads over rounds, the ratios and the counts against the targets."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
import report  # noqa: E402


def entry(name, real_time, median=None, unit="us", **counters):
    e = {"name": name + "/min_time:0.100/manual_time", "run_type": "iteration",
         "real_time": real_time, "time_unit": unit}
    if median is not None:
        e["call_median_us"] = median
    e.update(counters)
    return e


def report_page(directory, *args):
    """The page report.py writes from these arguments (and --out)."""
    out = os.path.join(directory, "page.md")
    subprocess.run([sys.executable, os.path.join(HERE, "..", "benchmarks", "report.py"), *args,
                    "--out", out], check=True)
    with open(out) as fh:
        return fh.read()


def write(directory, name, entries, context=None):
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        json.dump({"context": context or {}, "benchmarks": entries}, fh)
    return path


def page_of_cases(cases, context=None):
    """The page of one normlab file of (name, median µs, roofline, roofline_dram) cases."""
    with tempfile.TemporaryDirectory() as d:
        ours = write(d, "normlab.json",
                     [entry(name, 0, median=median, roofline=roof, roofline_dram=dram)
                      for name, median, roof, dram in cases], context=context)
        return report_page(d, "--normlab", ours, "--machine", "test machine", "--command", "test")


class TimeOfACase(unittest.TestCase):
    def test_median_call_is_taken_over_the_mean(self):
        self.assertEqual(report.to_us(entry("normlab/layer_norm/mlp/bwd", 120.0, median=80.0)),
                         80.0)

    def test_without_a_median_the_real_time_in_its_unit(self):
        self.assertEqual(report.to_us(entry("pytorch/layer_norm/mlp/bwd", 0.25, unit="ms")), 250.0)
        self.assertAlmostEqual(report.to_us(entry("pytorch/layer_norm/mlp/bwd", 1500, unit="ns")),
                               1.5)


class Rounds(unittest.TestCase):
    def test_median_over_rounds_and_spread(self):
        with tempfile.TemporaryDirectory() as d:
            paths = [write(d, f"r{i}.json",
                           [entry("normlab/batch_norm/conv/bwd", 999.0, median=m,
                                  roofline=r, roofline_dram=r / 2)])
                     for i, (m, r) in enumerate([(100.0, 0.9), (130.0, 0.6), (110.0, 0.8)])]
            times, counters, _, files, spread, per_file, _ = report.collect_rounds(paths)
        k = ("normlab", "batch_norm", "conv", "bwd")
        self.assertEqual(files, 3)
        self.assertEqual(times[k], 110.0)
        self.assertAlmostEqual(spread[k], 1.3)
        self.assertEqual(counters[k], (0.8, 0.4))
        self.assertEqual(report.round_times(per_file, 3)[k], {0: 100.0, 1: 130.0, 2: 110.0})

    def test_rounds_split_over_files_and_rounds_met(self):
        # Two rounds of two files each (one per group of cases), as run.sh writes them.
        per_file = [{("normlab", "a"): 10.0}, {("normlab", "b"): 20.0},
                    {("normlab", "a"): 12.0}, {("normlab", "b"): 30.0}]
        ours = report.round_times(per_file, 2)
        self.assertEqual(ours[("normlab", "a")], {0: 10.0, 1: 12.0})
        self.assertEqual(ours[("normlab", "b")], {0: 20.0, 1: 30.0})
        ours[("peer", "a")] = {0: 14.0, 1: 17.0}
        # 14 >= 1.5 * 10 fails, 17 >= 1.5 * 12 fails; at factor 1 both hold.
        self.assertEqual(report.rounds_met(ours, ("normlab", "a"), ("peer", "a"), 1.5), (0, 2))
        self.assertEqual(report.rounds_met(ours, ("normlab", "a"), ("peer", "a"), 1.0), (2, 2))

    def test_reach_uses_the_faster_triad(self):
        triad = {("triad", "conv_bwd", "threads:2"): (45.0, 6.0e6),
                 ("triad_streamed", "conv_bwd", "threads:2"): (55.0, 6.0e6)}
        peaks = {("triad", "conv_bwd", "threads:2"): 50.0,
                 ("triad_streamed", "conv_bwd", "threads:2"): 60.0}
        # 6 MB in 200 us is 30 GB/s: half of the faster (streamed) triad's best round, 60.
        self.assertAlmostEqual(report.reach(triad, peaks, "conv", "bwd", 2, 200.0), 50.0)
        # In 50 us it would take 120 GB/s, twice what was measured: out of reach.
        self.assertAlmostEqual(report.reach(triad, peaks, "conv", "bwd", 2, 50.0), 200.0)
        self.assertIsNone(report.reach(triad, peaks, "conv", "fwd_eval", 2, 200.0))
        self.assertIsNone(report.reach(triad, peaks, "conv", "bwd", 1, 200.0))

    def test_peaks_are_the_fastest_round(self):
        with tempfile.TemporaryDirectory() as d:
            paths = [write(d, f"r{i}.json",
                           [{"name": "triad_streamed/conv_bwd/threads:2", "run_type": "iteration",
                             "bandwidth_GBps": g, "bytes": 6.0e6}])
                     for i, g in enumerate([40.0, 70.0, 50.0])]
            _, _, triad, _, _, _, peaks = report.collect_rounds(paths)
        k = ("triad_streamed", "conv_bwd", "threads:2")
        self.assertEqual(triad[k], (50.0, 6.0e6))
        self.assertEqual(peaks[k], 70.0)


class Chains(unittest.TestCase):
    def test_chain_cases_are_keyed_by_length_and_plan(self):
        self.assertEqual(
            report.key("chain/batch_norm/conv/fwd_eval/layers:4/plan:streamed/min_time:0.100/"
                       "manual_time"),
            ("chain", "batch_norm", "conv", ("fwd_eval", 4, "streamed")))

    def test_section_gives_time_per_layer_and_the_ratio(self):
        times = {("chain", "batch_norm", "conv", ("fwd_eval", 4, "kept")): 1000.0,
                 ("chain", "batch_norm", "conv", ("fwd_eval", 4, "streamed")): 1500.0,
                 ("normlab", "batch_norm", "conv", "fwd_eval"): 900.0}
        section = report.chain_section(times)
        self.assertIn("| 4 | batch_norm conv (32, 64, 56, 56) | 1,000 | 1,500 | 1.50× |", section)
        self.assertEqual(report.chain_section({("normlab", "batch_norm", "conv", "bwd"): 1.0}),
                         [])

    def test_section_says_which_plan_the_detected_cache_takes(self):
        times = {("chain", "batch_norm", "conv", ("fwd_eval", 1, "kept")): 1000.0,
                 ("chain", "batch_norm", "conv", ("fwd_eval", 1, "streamed")): 800.0}
        self.assertIn("32 MiB last-level cache detected, under which a layer on this shape "
                      "streams its output", " ".join(report.chain_section(times, 32, True)))
        self.assertIn("260 MiB last-level cache detected, under which a layer on this shape "
                      "keeps its output", " ".join(report.chain_section(times, 260, False)))
        # JSON without the program's answer (older runs): no claim either way.
        self.assertNotIn("detected", " ".join(report.chain_section(times, 260)))
        self.assertIn("32 MiB last-level cache set by `NORMLAB_LAST_LEVEL_CACHE`",
                      " ".join(report.chain_section(times, 32, True, "NORMLAB_LAST_LEVEL_CACHE")))


class WholeModel(unittest.TestCase):
    def test_medians_spread_and_overhead_over_rounds(self):
        def run(identity, bn):
            return [{"name": "mlp_epoch/identity/iterations:2/manual_time",
                     "run_type": "iteration", "examples_per_second": identity},
                    {"name": "mlp_epoch/batch_norm/iterations:2/manual_time",
                     "run_type": "iteration", "examples_per_second": bn}]
        section = report.training_section([run(60000.0, 40000.0), run(50000.0, 50000.0),
                                           run(70000.0, 45000.0)])
        # Medians: identity 60 000, batch_norm 45 000 (overhead 60/45 - 1 = +33%); spreads
        # 70/50 and 50/40.
        self.assertIn("| `batch_norm` | 45,000 | 1.25× | +33% |", section)
        self.assertIn("| `identity` | 60,000 | 1.40× | +0% |", section)
        self.assertTrue(any("median over 3 rounds" in line for line in section))

    def test_overhead_from_the_paired_cases_where_the_run_has_them(self):
        def run(identity, bn, paired_bn, paired_gn=None):
            entries = [{"name": f"mlp_epoch/{v}/iterations:2/manual_time",
                        "run_type": "iteration", "examples_per_second": rate}
                       for v, rate in (("identity", identity), ("batch_norm", bn),
                                       ("group_norm", bn))]
            entries.append({"name": "paired_overhead/mlp/batch_norm/iterations:8/manual_time",
                            "run_type": "iteration", "overhead": paired_bn})
            if paired_gn is not None:
                entries.append({"name": "paired_overhead/mlp/group_norm/iterations:8/manual_time",
                                "run_type": "iteration", "overhead": paired_gn})
            # A case that failed (its counters absent) counts in no round.
            entries.append({"name": "paired_overhead/mlp/rms_norm/iterations:8/manual_time",
                            "run_type": "iteration", "error_occurred": True,
                            "error_message": "rms_norm: diverged"})
            return entries
        section = report.training_section([run(60000.0, 40000.0, 0.03, -0.004),
                                           run(50000.0, 50000.0, 0.05),
                                           run(70000.0, 45000.0, -0.01)])
        # The medians of the epochs would say +33%; the paired rounds say 3% (-1% to +5%).
        self.assertIn("| `batch_norm` | 45,000 | 1.25× | +3% (-1 to +5) |", section)
        # One paired round: its value, without a range; -0.4% is +0%, not -0%.
        self.assertIn("| `group_norm` | 45,000 | 1.25× | +0% |", section)
        self.assertIn("| `identity` | 60,000 | 1.40× | +0% |", section)
        text = " ".join(section)
        self.assertIn("trained in turn in one process", text)
        self.assertIn("then have biases, where a normalizer's β takes their place", text)
        self.assertIn("the median over 3 rounds, in brackets the lowest and highest round", text)
        self.assertNotIn("from the medians", text)


class Page(unittest.TestCase):
    def test_ratios_and_targets(self):
        with tempfile.TemporaryDirectory() as d:
            ours = write(d, "normlab.json", [
                entry("normlab/batch_norm/conv/fwd_train", 0, median=100.0, roofline=0.75,
                      roofline_dram=1.0),
                entry("normlab/batch_norm/conv/bwd", 0, median=200.0, roofline=0.5,
                      roofline_dram=0.9),
                {"name": "triad/conv_fwd/threads:2", "run_type": "iteration",
                 "bandwidth_GBps": 50.0, "bytes": 5.0e7},
                {"name": "triad/conv_fwd/threads:1", "run_type": "iteration",
                 "bandwidth_GBps": 28.0, "bytes": 5.0e7},
            ], context={"memory_locked": "yes"})
            onednn = write(d, "onednn.json", [
                entry("onednn_plain/batch_norm/conv/fwd_train", 0, median=400.0),
                entry("onednn_blocked/batch_norm/conv/fwd_train", 0, median=120.0),
                entry("onednn_plain/batch_norm/conv/bwd", 0, median=180.0),
            ], context={"onednn_blocked_layout": "nChw8c"})
            torch = write(d, "pytorch.json", [
                entry("pytorch/batch_norm/conv/fwd_train", 160.0),
                entry("pytorch/batch_norm/conv/bwd", 250.0),
            ])
            page = report_page(d, "--normlab", ours, "--onednn", onednn, "--pytorch", torch,
                               "--machine", "test machine", "--command", "test")
        # The faster oneDNN layout is the bar: 120 / 100 and 180 / 200.
        self.assertIn("| conv (32, 64, 56, 56) | fwd_train | 100 | — | 400 | 120 | 160 | "
                      "1.20× | — | 1.60× | — | 75% | 100% |", page)
        self.assertIn("| conv (32, 64, 56, 56) | bwd | 200 | — | 180 | — | 250 | 0.90× | — | "
                      "1.25× | — | 50% | 90% |", page)
        self.assertIn("| at least as fast as oneDNN (faster layout) where oneDNN has the "
                      "operation | 1 of 2 |", page)
        self.assertIn("| at least 1.5× faster than PyTorch 1.13 | 1 of 2 |", page)
        self.assertIn("Missed, slower than oneDNN: batch_norm conv bwd (0.90×).", page)
        self.assertIn("Missed, below 70% of roofline: batch_norm conv bwd (50%).", page)
        self.assertIn("| conv_fwd | 50.0 MB | 28.0 | 50.0 | — | — |", page)
        # No paired cases in the oneDNN file: no paired row in the summary.
        self.assertNotIn("(`oneDNN paired`)", page)
        # Without --data, the page names no data file.
        self.assertNotIn("The run's data", page)
        self.assertNotIn("(`PyTorch paired`)", page)

    def test_plain_loops_beside_the_layers_and_the_roofline_misses(self):
        # The plain loop reached 60% of roofline on conv's backward (the target is out of its
        # reach there) and 90% on the forward; the layers' times over the loop's.
        cases = [  # name, median µs, roofline, roofline_dram
            ("normlab/batch_norm/conv/fwd_train", 150.0, 0.6, 1.0),
            ("normlab/batch_norm/conv/bwd", 300.0, 0.5, 0.9),
            ("normlab/layer_norm/conv/bwd", 250.0, 0.6, 1.1),
            ("plain/loop/conv/fwd_train", 100.0, 0.9, 1.5),
            ("plain/loop/conv/bwd", 200.0, 0.6, 1.2),
        ]
        page = page_of_cases(cases, context={"memory_locked": "yes"})
        self.assertIn("Missed, below 70% of roofline: batch_norm conv fwd_train (60%; the plain "
                      "loop 90%); batch_norm conv bwd (50%; the plain loop 60%); layer_norm conv "
                      "bwd (60%; the plain loop 60%).", page)
        self.assertIn("(2 of 3 misses here)", page)
        self.assertIn("| conv (32, 64, 56, 56) | fwd_train | 100 | 90% | 150% | 1.50× | — |",
                      page)
        self.assertIn("| conv (32, 64, 56, 56) | bwd | 200 | 60% | 120% | 1.50× | 1.25× |", page)
        # The loops are no layer of their own.
        self.assertNotIn("## `loop`", page)
        self.assertNotIn("## `plain`", page)

    def test_two_plain_passes_beside_batch_norm(self):
        # The plain loop after a plain read of its inputs: its time and roofline in the plain
        # table, BatchNorm's time over it, and its fraction beside BatchNorm's roofline misses
        # (not LayerNorm's, which reads its rows once); inference has no such case.
        cases = [  # name, median µs, roofline, roofline_dram
            ("normlab/batch_norm/transformer/fwd_train", 600.0, 0.3, 0.8),
            ("normlab/batch_norm/transformer/bwd", 900.0, 0.4, 0.8),
            ("normlab/layer_norm/transformer/bwd", 800.0, 0.45, 0.9),
            ("plain/loop/transformer/fwd_train", 250.0, 0.7, 1.8),
            ("plain/two_passes/transformer/fwd_train", 400.0, 0.44, 1.1),
            ("plain/loop/transformer/bwd", 400.0, 0.85, 1.7),
            ("plain/two_passes/transformer/bwd", 720.0, 0.47, 0.9),
            ("plain/loop/transformer/fwd_eval", 260.0, 0.9, 2.3),
        ]
        page = page_of_cases(cases)
        self.assertIn("| shape | pass | plain loop | roofline | DRAM | two passes | roofline | "
                      "batch_norm / plain | layer_norm / plain | batch_norm / two passes |", page)
        self.assertIn("| transformer (4096, 768) | fwd_train | 250 | 70% | 180% | 400 | 44% | "
                      "2.40× | — | 1.50× |", page)
        self.assertIn("| transformer (4096, 768) | bwd | 400 | 85% | 170% | 720 | 47% | 2.25× | "
                      "2.00× | 1.25× |", page)
        self.assertIn("| transformer (4096, 768) | fwd_eval | 260 | 90% | 230% | — | — | — | — "
                      "| — |", page)
        self.assertIn("Missed, below 70% of roofline: batch_norm transformer fwd_train (30%; the "
                      "plain loop 70%, two plain passes 44%); batch_norm transformer bwd (40%; the "
                      "plain loop 85%, two plain passes 47%); layer_norm transformer bwd (45%; the "
                      "plain loop 85%).", page)
        self.assertNotIn("## `two_passes`", page)

    def test_two_plain_passes_beside_batch_norm_misses_against_pytorch_on_rows(self):
        # PyTorch's time over the two plain passes' beside BatchNorm's misses on rows (a pass
        # that reads its input twice could reach no more); not beside LayerNorm's, nor on conv.
        with tempfile.TemporaryDirectory() as d:
            ours = write(d, "normlab.json", [
                entry("normlab/batch_norm/transformer/fwd_train", 0, median=600.0),
                entry("normlab/batch_norm/transformer/bwd", 0, median=900.0),
                entry("normlab/layer_norm/transformer/bwd", 0, median=800.0),
                entry("normlab/batch_norm/conv/bwd", 0, median=300.0),
                entry("normlab/batch_norm/seq/fwd_train", 0, median=250.0),
                entry("plain/two_passes/seq/fwd_train", 0, median=180.0),
                entry("plain/two_passes/transformer/fwd_train", 0, median=400.0),
                entry("plain/two_passes/transformer/bwd", 0, median=1000.0),
                entry("plain/two_passes/conv/bwd", 0, median=280.0)])
            torch = write(d, "pytorch.json", [
                entry("pytorch/batch_norm/transformer/fwd_train", 850.0),
                entry("pytorch/batch_norm/transformer/bwd", 1200.0),
                entry("pytorch/layer_norm/transformer/bwd", 1000.0),
                entry("pytorch/batch_norm/conv/bwd", 400.0),
                entry("pytorch/batch_norm/seq/fwd_train", 300.0)])
            page = report_page(d, "--normlab", ours, "--pytorch", torch, "--machine",
                               "test machine", "--command", "test")
        self.assertIn("Missed, less than 1.5× faster than PyTorch: batch_norm conv bwd (1.33×); "
                      "batch_norm seq fwd_train (1.20×; two plain passes 1.67×); "
                      "batch_norm transformer fwd_train (1.42×; two plain passes 2.12×); "
                      "batch_norm transformer bwd (1.33×; two plain passes 1.20×); layer_norm "
                      "transformer bwd (1.25×).", page)
        self.assertIn("would have to outrun these plain loops to reach the target (1 of 3 such "
                      "misses here).", page)

    def test_paired_ratio_is_the_smaller_over_layouts_with_rounds(self):
        # Two rounds; oneDNN's two layouts each timed in turn with normlab. Medians over the
        # rounds: plain 3.0, blocked 0.975 -> paired 0.98 (a miss); round by round the smaller
        # of the two is 0.9 then 1.05: met in 1 of 2.
        with tempfile.TemporaryDirectory() as d:
            ours, onednn = [], []
            for r, blocked in enumerate([0.9, 1.05]):
                ours.append(write(d, f"normlab_{r}.json", [
                    entry("normlab/batch_norm/conv_deep/bwd", 0, median=150.0),
                    entry("normlab/batch_norm/conv/bwd", 0, median=100.0)]))
                onednn.append(write(d, f"onednn_{r}.json", [
                    entry("onednn_plain/batch_norm/conv_deep/bwd", 0, median=900.0),
                    entry("onednn_blocked/batch_norm/conv_deep/bwd", 0, median=140.0),
                    entry("paired/onednn_plain/batch_norm/conv_deep/bwd", 0,
                          onednn_median_us=950.0, normlab_median_us=316.0, paired_ratio=3.0),
                    entry("paired/onednn_blocked/batch_norm/conv_deep/bwd", 0,
                          onednn_median_us=150.0, normlab_median_us=150.0 / blocked,
                          paired_ratio=blocked),
                    entry("onednn_blocked/batch_norm/conv/bwd", 0, median=120.0),
                    entry("paired/onednn_blocked/batch_norm/conv/bwd", 0,
                          onednn_median_us=130.0, normlab_median_us=100.0, paired_ratio=1.3)]))
            page = report_page(d, "--rounds", "2", "--normlab", *ours, "--onednn", *onednn,
                               "--machine", "threads: 2   commit: x", "--command", "test")
        # The paired ratios stay out of the time columns: 140 / 150 and 120 / 100.
        self.assertIn("| conv_deep (8, 256, 14, 14) | bwd | 150 | 1.00× | 900 | 140 | — | "
                      "0.93× | 0.98× | — | — | — | — |", page)
        self.assertIn("| conv (32, 64, 56, 56) | bwd | 100 | 1.00× | — | 120 | — | 1.20× | "
                      "1.30× | — | — | — | — |", page)
        self.assertIn("| the same, timed in turn with oneDNN in one process (`oneDNN paired`) | "
                      "1 of 2 |", page)
        self.assertIn("Missed, slower than oneDNN timed in turn in one process: batch_norm "
                      "conv_deep bwd (0.98×; met in 1 of 2 rounds).", page)
        self.assertEqual(report.paired_ratio({}, "batch_norm", "conv", "bwd"), None)

    def test_misses_say_rounds_and_reach(self):
        with tempfile.TemporaryDirectory() as d:
            ours, torch, onednn = [], [], []
            for r, (mine, peer, dnnl) in enumerate([(200.0, 250.0, 190.0), (220.0, 350.0, 230.0)]):
                entries = [entry("normlab/batch_norm/conv/bwd", 0, median=mine, roofline=0.5,
                                 roofline_dram=0.9)]
                if r == 0:
                    entries += [
                        {"name": "triad/conv_bwd/threads:2", "run_type": "iteration",
                         "bandwidth_GBps": 50.0, "bytes": 6.0e6},
                        {"name": "triad_streamed/conv_bwd/threads:2", "run_type": "iteration",
                         "bandwidth_GBps": 60.0, "bytes": 6.0e6}]
                ours.append(write(d, f"normlab_{r}.json", entries))
                torch.append(write(d, f"pytorch_{r}.json",
                                   [entry("pytorch/batch_norm/conv/bwd", peer)]))
                onednn.append(write(d, f"onednn_{r}.json",
                                    [entry("onednn_plain/batch_norm/conv/bwd", 0, median=dnnl)]))
            page = report_page(d, "--rounds", "2", "--normlab", *ours, "--onednn", *onednn,
                               "--pytorch", *torch, "--machine", "threads: 2   commit: x",
                               "--command", "test")
        # Medians: ours 210, oneDNN 210 (met), PyTorch 300 (1.43×: missed). Round by round
        # PyTorch's 250 < 300 and 350 >= 330; 1.5× asks 6 MB in 200 us, 50% of 60 GB/s.
        self.assertIn("| at least 1.5× faster than PyTorch 1.13 | 0 of 1 |", page)
        self.assertIn("Missed, less than 1.5× faster than PyTorch: batch_norm conv bwd (1.43×; "
                      "met in 1 of 2 rounds; 1.5× needs 50%).", page)
        self.assertIn("(0 of 1 misses here)", page)
        self.assertIn("| conv_bwd | 6.0 MB | — | 50.0 | — | 60.0 |", page)
        self.assertNotIn("Missed, slower than oneDNN", page)

    def test_pytorch_paired_column_with_rounds(self):
        # Two rounds of torch_bench. layer_norm transformer fwd_train: 1.4 then 1.7, median 1.55
        # (met); bwd: 1.2 then 1.6, median 1.4 (missed, met in 1 of 2 rounds). Their medians
        # stay out of the time columns.
        with tempfile.TemporaryDirectory() as d:
            ours, paired = [], []
            for r, (fwd, bwd) in enumerate([(1.4, 1.2), (1.7, 1.6)]):
                ours.append(write(d, f"normlab_{r}.json", [
                    entry("normlab/layer_norm/transformer/fwd_train", 0, median=1000.0),
                    entry("normlab/layer_norm/transformer/bwd", 0, median=2000.0)]))
                paired.append(write(d, f"torch_{r}.json", [
                    entry("paired/pytorch/layer_norm/transformer/fwd_train", 0,
                          pytorch_median_us=1000.0 * fwd, normlab_median_us=1000.0,
                          paired_ratio=fwd),
                    entry("paired/pytorch/layer_norm/transformer/bwd", 0,
                          pytorch_median_us=2000.0 * bwd, normlab_median_us=2000.0,
                          paired_ratio=bwd)]))
            page = report_page(d, "--rounds", "2", "--normlab", *ours, "--pytorch-paired",
                               *paired, "--machine", "threads: 2   commit: x", "--command",
                               "test")
        self.assertIn("| transformer (4096, 768) | fwd_train | 1,000 | 1.00× | — | — | — | — | — "
                      "| — | 1.55× | — | — |", page)
        self.assertIn("| transformer (4096, 768) | bwd | 2,000 | 1.00× | — | — | — | — | — | — "
                      "| 1.40× | — | — |", page)
        self.assertIn("| the same, timed in turn with PyTorch's C++ API in one process "
                      "(`PyTorch paired`) | 1 of 2 |", page)
        self.assertIn("Missed, less than 1.5× faster than PyTorch timed in turn in one process: "
                      "layer_norm transformer bwd (1.40×; met in 1 of 2 rounds).", page)
        # No separate PyTorch times: that target counts none.
        self.assertIn("| at least 1.5× faster than PyTorch 1.13 | 0 of 0 |", page)


class Accuracy(unittest.TestCase):
    def test_errors_of_both_implementations_over_rounds(self):
        def case(name, ours, theirs, **extra):
            return {"name": f"accuracy/{name}/iterations:1", "run_type": "iteration",
                    "real_time": 5.0, "time_unit": "us", "normlab_max_error": ours,
                    "pytorch_max_error": theirs, **extra}
        with tempfile.TemporaryDirectory() as d:
            ours = write(d, "normlab.json", [
                entry("normlab/batch_norm/transformer/fwd_train", 0, median=800.0,
                      roofline=0.3, roofline_dram=1.0)])
            rounds = [write(d, f"torch_{r}.json", [
                case("batch_norm/transformer/bwd/offset:0", 4.0e-7, 2.0e-6),
                case("batch_norm/transformer/fwd_train/offset:100", 2.0e-6 + r * r * 1e-7, 8.0e-5),
                case("batch_norm/transformer/fwd_train/offset:0", 6.0e-7, 3.0e-6),
                case("layer_norm/mlp/fwd_train/offset:0", 9.0e-7, 6.3e-7),
                case("layer_norm/conv/fwd_train/offset:0", 1.0, 1.0, error_occurred=True),
            ]) for r in range(3)]
            page = report_page(d, "--normlab", ours, "--pytorch-paired", *rounds,
                               "--machine", "test machine", "--command", "test")
        section = page[page.index("## Accuracy beside speed"):]
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        # Medians over the rounds (2.1e-06 for normlab at x + 100), layers, shapes and passes in
        # the suite's order, the offset input after the suite's; a failed case is left out.
        self.assertEqual(rows, [
            "| `batch_norm` | transformer (4096, 768) | fwd_train | x | 6.00e-07 | 3.00e-06 | "
            "5.0× |",
            "| `batch_norm` | transformer (4096, 768) | fwd_train | x + 100 | 2.10e-06 | "
            "8.00e-05 | 38.1× |",
            "| `batch_norm` | transformer (4096, 768) | bwd | x | 4.00e-07 | 2.00e-06 | 5.0× |",
            "| `layer_norm` | mlp (256, 1024) | fwd_train | x | 9.00e-07 | 6.30e-07 | 0.7× |",
        ])
        # Errors are not times: no layer table or summary counts come from them.
        self.assertNotIn("## `layer_norm`", page)
        self.assertIn("| at least 1.5× faster than PyTorch 1.13 | 0 of 0 |", page)

    def test_no_accuracy_cases_no_section(self):
        self.assertNotIn("## Accuracy beside speed", page_of_cases(
            [("normlab/batch_norm/conv/fwd_train", 100.0, 0.5, 1.0)]))


def run_report(*args):
    """report.py with these arguments: (exit code, stderr)."""
    done = subprocess.run([sys.executable, os.path.join(HERE, "..", "benchmarks", "report.py"),
                           *args], capture_output=True, text=True)
    return done.returncode, done.stderr


class RunData(unittest.TestCase):
    """--data writes what the page is made of; --from-data makes the same page from it."""

    def files(self, d):
        ours = write(d, "normlab.json", [
            entry("normlab/batch_norm/conv/fwd_train", 0, median=100.0, roofline=0.75,
                  roofline_dram=1.0, cpu_time=180.0, iterations=12),
            entry("normlab/layer_norm/mlp/bwd", 0, median=40.0, roofline=0.5,
                  roofline_dram=0.9),
            {"name": "triad/conv_fwd/threads:2", "run_type": "iteration",
             "bandwidth_GBps": 50.0, "bytes": 5.0e7},
        ], context={"memory_locked": "yes", "host_name": "builder-7", "date": "2026-12-05"})
        second = write(d, "normlab2.json", [
            entry("normlab/batch_norm/conv/fwd_train", 0, median=110.0, roofline=0.7,
                  roofline_dram=0.95),
            entry("normlab/layer_norm/mlp/bwd", 0, median=44.0, roofline=0.45,
                  roofline_dram=0.8),
        ])
        onednn = write(d, "onednn.json", [
            entry("onednn_plain/batch_norm/conv/fwd_train", 0, median=400.0),
            entry("onednn_blocked/batch_norm/conv/fwd_train", 0, median=120.0),
            {"name": "paired/onednn_blocked/batch_norm/conv/fwd_train/min_time:0.100",
             "run_type": "iteration", "paired_ratio": 1.1, "normlab_median_us": 101.0,
             "onednn_median_us": 111.1},
        ], context={"onednn_blocked_layout": "nChw8c"})
        empty = os.path.join(d, "onednn2.json")
        open(empty, "w").close()  # a round whose filter matched nothing
        torch = write(d, "pytorch.json", [entry("pytorch/batch_norm/conv/fwd_train", 160.0)])
        training = write(d, "training.json", [
            {"name": "mlp_epoch/identity", "run_type": "iteration",
             "examples_per_second": 1000.0},
            {"name": "mlp_epoch/batch_norm", "run_type": "iteration",
             "examples_per_second": 800.0},
        ])
        return ["--rounds", "2", "--normlab", ours, second, "--onednn", onednn, empty,
                "--pytorch", torch, "--training", training, "--machine", "test machine\n",
                "--command", "THREADS=2 bash benchmarks/run.sh"]

    def test_the_page_again_from_the_data(self):
        for name in ("run.json", "run.json.gz"):
            with self.subTest(name), tempfile.TemporaryDirectory() as d:
                data = os.path.join(d, name)
                page = report_page(d, *self.files(d), "--data", data)
                # The files are gone: the data alone makes the page.
                for f in os.listdir(d):
                    if f.endswith(".json") and f != name:
                        os.remove(os.path.join(d, f))
                self.assertEqual(report_page(d, "--from-data", data), page)
                self.assertIn("| conv (32, 64, 56, 56) | fwd_train | 105 | 1.10× |", page)
                self.assertIn("test machine", page)
                self.assertIn("Command: `THREADS=2 bash benchmarks/run.sh`", page)
                self.assertIn("## Whole-model training speed", page)
                self.assertIn(f"The run's data is in `{name}` beside this page, from which "
                              "`python3 benchmarks/report.py --from-data <that file> --out "
                              "page.md` makes the page again.", page)

    def test_the_data_keeps_what_the_page_reads_and_the_programs_checks(self):
        with tempfile.TemporaryDirectory() as d:
            data_path = os.path.join(d, "run.json")
            report_page(d, *self.files(d), "--data", data_path)
            with open(data_path) as fh:
                data = json.load(fh)
        self.assertEqual(data["rounds"], 2)
        self.assertEqual(data["machine"], "test machine\n")
        self.assertEqual(sorted(data["inputs"]),
                         ["normlab", "onednn", "pytorch", "training"])
        first = data["inputs"]["normlab"][0]
        # The context keeps what the page reads and what describes the machine, not the host.
        self.assertEqual(first["context"], {"memory_locked": "yes", "date": "2026-12-05"})
        self.assertEqual(first["benchmarks"][0],
                         {"name": "normlab/batch_norm/conv/fwd_train/min_time:0.100/manual_time",
                          "run_type": "iteration", "real_time": 0, "time_unit": "us",
                          "call_median_us": 100.0, "roofline": 0.75, "roofline_dram": 1.0})
        paired = data["inputs"]["onednn"][0]["benchmarks"][2]
        self.assertEqual((paired["normlab_median_us"], paired["onednn_median_us"]),
                         (101.0, 111.1))
        # The empty round keeps its place, so rounds are still told apart by position.
        self.assertEqual(data["inputs"]["onednn"][1], {"context": {}, "benchmarks": []})

    def test_unreadable_truncated_or_foreign_data_is_refused_by_name(self):
        with tempfile.TemporaryDirectory() as d:
            data = os.path.join(d, "run.json")
            report_page(d, *self.files(d), "--data", data)
            with open(data) as fh:
                text = fh.read()
            out = os.path.join(d, "refused.md")
            cases = {
                "truncated.json": (text[: len(text) // 2],
                                   "is not a complete JSON file of benchmark data"),
                "program.json": (json.dumps({"context": {}, "benchmarks": []}),
                                 "expected benchmark data of format 1"),
                "no_normlab.json": (text.replace('"normlab"', '"normlabx"'),
                                    "benchmark data without normlab's results"),
                "foreign.json": (text.replace('"pytorch"', '"tensorflow"'),
                                 "inputs['tensorflow'] is not a list of benchmark results"),
            }
            for name, (content, message) in cases.items():
                with self.subTest(name):
                    path = os.path.join(d, name)
                    with open(path, "w") as fh:
                        fh.write(content)
                    code, err = run_report("--from-data", path, "--out", out)
                    self.assertNotEqual(code, 0)
                    self.assertIn(path, err)
                    self.assertIn(message, err)
                    self.assertFalse(os.path.exists(out))
            code, err = run_report("--from-data", os.path.join(d, "missing.json"), "--out", out)
            self.assertNotEqual(code, 0)
            self.assertIn("cannot read the benchmark data", err)
            code, err = run_report("--from-data", data, "--normlab", data, "--out", out)
            self.assertNotEqual(code, 0)
            self.assertIn("--from-data takes the place of --normlab", err)
            code, err = run_report("--out", out)
            self.assertNotEqual(code, 0)
            self.assertIn("--normlab, --machine, --command", err)


class CommittedPages(unittest.TestCase):
    """Every benchmark page in docs/ that has its run's data beside it (docs/X.json for
    docs/X.md) is what report.py makes of that data: its figures came from the run, not by hand."""

    def test_each_page_is_made_from_its_data(self):
        docs = os.path.join(HERE, "..", "docs")
        # The main report's run is published with it.
        self.assertTrue(os.path.exists(os.path.join(docs, "benchmarks.json")))
        for name in sorted(os.listdir(docs)):
            stem = name[: -len(".json.gz")] if name.endswith(".json.gz") else (
                name[: -len(".json")] if name.endswith(".json") else None)
            page = os.path.join(docs, f"{stem}.md") if stem else None
            if not stem or not name.startswith("benchmarks") or not os.path.exists(page):
                continue
            with self.subTest(page), tempfile.TemporaryDirectory() as d:
                made = report_page(d, "--from-data", os.path.join(docs, name))
                with open(page) as fh:
                    committed = fh.read()
                self.assertEqual(made, committed, f"{page} differs from what report.py makes of "
                                 f"docs/{name}; regenerate it with report.py --from-data")


if __name__ == "__main__":
    unittest.main()
