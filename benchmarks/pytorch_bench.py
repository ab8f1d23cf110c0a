#!/usr/bin/env python3
"""PyTorch's CPU normalization kernels on the shape suite of bench_common.hpp.

Writes Google Benchmark-style JSON (name "pytorch/<variant>/<shape>/<pass>", real_time in
microseconds, the median of timed repetitions) so that benchmarks/report.py can put it beside
normlab's and oneDNN's numbers. Needs Debian's python3-torch (PyTorch 1.13):

    OMP_NUM_THREADS=2 /usr/bin/python3 benchmarks/pytorch_bench.py --threads 2 --out pytorch.json
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {
    "mlp": (256, 1024),
    "conv": (32, 64, 56, 56),
    "conv_small_batch": (2, 64, 56, 56),
    "conv_deep": (8, 256, 14, 14),
    "seq": (64 * 28, 512),
    "transformer": (4096, 768),
}


def rms_norm(x, w, eps):
    # torch.nn.RMSNorm arrived after 1.13: its documented formula, as a user of 1.13 writes it.
    dims = tuple(range(1, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    return x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps) * w.view(shape)


def layer_norm(x, w, b):
    # normlab's layer_norm: statistics over (C, ...) with per-channel affine. For (N, C) that is
    # F.layer_norm; for 4-D it is group_norm with one group.
    if x.dim() == 2:
        return F.layer_norm(x, (x.shape[1],), w, b, 1e-5)
    return F.group_norm(x, 1, w, b, 1e-5)


def variants(shape):
    c = shape[1]
    out = {
        "batch_norm": lambda x, w, b, rm, rv, train: F.batch_norm(x, rm, rv, w, b, train, 0.1, 1e-5),
        "layer_norm": lambda x, w, b, rm, rv, train: layer_norm(x, w, b),
        "group_norm": lambda x, w, b, rm, rv, train: F.group_norm(x, 32, w, b, 1e-5),
        "rms_norm": lambda x, w, b, rm, rv, train: rms_norm(x, w, torch.finfo(torch.float32).eps),
    }
    if len(shape) > 2:
        out["instance_norm"] = lambda x, w, b, rm, rv, train: F.instance_norm(
            x, None, None, w, b, True, 0.1, 1e-5)
    assert c % 32 == 0
    return out


def timed(fn, min_time, prepare=lambda: None):
    """Median wall-clock time of fn(), each call after an untimed prepare()."""
    prepare()
    fn()
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(samples) < 5:
        prepare()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), len(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--filter", default="", help="substring a benchmark name must contain")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for shape_name, shape in SHAPES.items():
        x0 = 1.0 + 2.0 * torch.randn(shape)
        x = x0.clone().requires_grad_(True)
        dy = torch.randn(shape)
        c = shape[1]
        w = torch.ones(c, requires_grad=True)
        b = torch.zeros(c, requires_grad=True)
        rm, rv = torch.zeros(c), torch.ones(c)
        for name, f in variants(shape).items():
            for pass_name in ("fwd_train", "fwd_eval", "bwd"):
                full = f"pytorch/{name}/{shape_name}/{pass_name}"
                if args.filter not in full:
                    continue
                # A training pass is handed its input anew each call, written by the intra-op
                # threads as a previous layer would write it (normlab's and oneDNN's benchmarks
                # do the same: copy_by_threads in bench_common.hpp); inference reads the same
                # input call after call.
                def hand_over_input(x=x, x0=x0):
                    with torch.no_grad():
                        x.copy_(x0)
                params = [x, w] if name == "rms_norm" else [x, w, b]
                if pass_name == "bwd":
                    graph = {}
                    def forward_before(f=f, x=x, w=w, b=b, rm=rm, rv=rv, graph=graph):
                        # Each backward follows an untimed training forward.
                        hand_over_input()
                        graph["y"] = f(x, w, b, rm, rv, True)
                    def run(params=params, dy=dy, graph=graph):
                        return torch.autograd.grad(graph.pop("y"), params, dy)
                    seconds, reps = timed(run, args.min_time, forward_before)
                elif pass_name == "fwd_train":
                    def run(f=f, x=x, w=w, b=b, rm=rm, rv=rv):
                        # Forward as in training: autograd records what backward needs.
                        with torch.enable_grad():
                            return f(x, w, b, rm, rv, True)
                    seconds, reps = timed(run, args.min_time, hand_over_input)
                else:
                    def run(f=f, x=x, w=w, b=b, rm=rm, rv=rv):
                        with torch.no_grad():
                            return f(x, w, b, rm, rv, False)
                    seconds, reps = timed(run, args.min_time)
                results.append({"name": full, "run_name": full, "run_type": "iteration",
                                "iterations": reps, "real_time": seconds * 1e6,
                                "cpu_time": seconds * 1e6, "time_unit": "us"})
                print(f"{full:45s} {seconds * 1e6:12.1f} us", flush=True)
    context = {"library": "torch " + torch.__version__, "threads": args.threads,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(args.out, "w") as fh:
        json.dump({"context": context, "benchmarks": results}, fh, indent=1)


if __name__ == "__main__":
    main()
