#!/usr/bin/env python3
"""Golden values for tests/golden_test.cpp, computed with PyTorch's own layers.

Run with Debian's python3-torch (PyTorch 1.13):  /usr/bin/python3 tests/data/make_golden.py
Each case is one .npz in tests/data/golden/ holding:
  spec (uint8 text of the normlab spec), steps (int64), x<t>, y<t> for every training step t,
  running_<name><t> after step t where the layer tracks running statistics, weight, bias,
  dy, dx, dweight, dbias (the backward of the last training step), x_eval, y_eval.
The script is deterministic (fixed seeds); re-running it must reproduce the committed files.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
STEPS = 3


class RMSNormRef(torch.nn.Module):
    """torch.nn.RMSNorm arrived after 1.13; this is its documented formula (ε inside the root,
    default ε = finfo(float32).eps), reduced over every dimension but the batch."""

    def __init__(self, channels):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(channels))
        self.eps = torch.finfo(torch.float32).eps

    def forward(self, x):
        dims = tuple(range(1, x.dim()))
        r = torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + self.eps)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * r * self.weight.view(shape)


def cases():
    C = 6
    yield "batch_norm_2d", "batch_norm", (7, C), torch.nn.BatchNorm1d(C)
    yield "batch_norm_3d", "batch_norm(momentum=0.3)", (5, C, 9), torch.nn.BatchNorm1d(C, momentum=0.3)
    yield "batch_norm_4d", "batch_norm", (4, C, 5, 3), torch.nn.BatchNorm2d(C)
    yield "batch_norm_cumulative_4d", "batch_norm(momentum=none)", (3, C, 4, 4), \
        torch.nn.BatchNorm2d(C, momentum=None)
    yield "batch_norm_no_affine_2d", "batch_norm(affine=false)", (9, C), \
        torch.nn.BatchNorm1d(C, affine=False)
    yield "batch_norm_untracked_4d", "batch_norm(track_running_stats=false)", (2, C, 3, 3), \
        torch.nn.BatchNorm2d(C, track_running_stats=False)
    yield "layer_norm_2d", "layer_norm", (5, C), torch.nn.LayerNorm(C)
    # LayerNorm over (C, H, W) with per-channel γ, β is GroupNorm with one group.
    yield "layer_norm_4d", "layer_norm", (3, C, 4, 5), torch.nn.GroupNorm(1, C)
    yield "instance_norm_3d", "instance_norm", (4, C, 10), torch.nn.InstanceNorm1d(C)
    yield "instance_norm_tracked_4d", "instance_norm(affine=true,track_running_stats=true)", \
        (3, C, 4, 4), torch.nn.InstanceNorm2d(C, affine=True, track_running_stats=True)
    yield "group_norm_4d", "group_norm(groups=3)", (4, C, 3, 5), torch.nn.GroupNorm(3, C)
    yield "group_norm_3d", "group_norm(groups=2,eps=0.001)", (3, C, 7), \
        torch.nn.GroupNorm(2, C, eps=1e-3)
    yield "rms_norm_2d", "rms_norm", (5, C), RMSNormRef(C)
    yield "rms_norm_4d", "rms_norm", (3, C, 2, 4), RMSNormRef(C)


def f32(t):
    return t.detach().numpy().astype(np.float32)


def make(case, spec, shape, layer, seed):
    g = torch.Generator().manual_seed(seed)
    out = {"spec": np.frombuffer(spec.encode(), dtype=np.uint8), "steps": np.array(STEPS, np.int64)}
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
            out[name] = f32(p)
    layer.train()
    for t in range(STEPS):
        x = (2.0 + 3.0 * torch.randn(shape, generator=g)).requires_grad_(True)
        layer.zero_grad()
        y = layer(x)
        out[f"x{t}"], out[f"y{t}"] = f32(x), f32(y)
        for name, b in layer.named_buffers():
            if b is not None and b.dtype == torch.float32:
                out[f"{name}{t}"] = f32(b)
        if t == STEPS - 1:
            dy = torch.randn(shape, generator=g)
            y.backward(dy)
            out["dy"], out["dx"] = f32(dy), f32(x.grad)
            for name, p in layer.named_parameters():
                out["d" + name] = f32(p.grad)
    layer.eval()
    x_eval = 2.0 + 3.0 * torch.randn(shape, generator=g)
    with torch.no_grad():
        out["x_eval"], out["y_eval"] = f32(x_eval), f32(layer(x_eval))
    np.savez(os.path.join(OUT, case + ".npz"), **out)


def write_npz_samples():
    """Archives as numpy writes them, for the npz reader's tests: stored and deflated members."""
    arrays = {
        "floats": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "doubles": np.linspace(-1, 1, 5),
        "count": np.array(42, dtype=np.int64),
    }
    np.savez(os.path.join(OUT, "..", "numpy_stored.npz"), **arrays)
    np.savez_compressed(os.path.join(OUT, "..", "numpy_compressed.npz"), **arrays)


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    write_npz_samples()
    for i, (case, spec, shape, layer) in enumerate(cases()):
        make(case, spec, shape, layer, seed=1000 + i)
        print("wrote", case)


if __name__ == "__main__":
    main()
