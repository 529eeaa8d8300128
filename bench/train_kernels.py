"""PyTorch's CPU ops against dass's compiled training kernels, forward + backward, at supernet shapes.

For each op of a DARTS cell (depthwise 3x3 / 5x5 / dilated, pointwise, max and average pooling, batch norm)
and each (channels, size) of a C=8, 5-cell supernet at batch 64, the two implementations run alternately in
one process (medians of `--rounds` rounds) on the same tensors; prints milliseconds and the speed-up. Both
compute the same values (checked here too, float32 tolerance).

    python bench/train_kernels.py [--rounds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from dass.kernels import avg_pool2d, batch_norm, conv2d, max_pool2d  # noqa: E402
from dass.runtime.load import warn_if_busy  # noqa: E402


def ops(c: int):
    """(name, needs weight shape, dass fn, PyTorch fn) for one channel count."""
    dw = {"dw 3x3": (3, 1), "dw 5x5": (5, 1), "dw 3x3 dil 2": (3, 2), "dw 5x5 dil 2": (5, 2)}
    for name, (k, d) in dw.items():
        p = d * (k - 1) // 2
        yield (f"relu+{name}", (c, 1, k, k), lambda x, w, p=p, d=d: conv2d(x, w, None, 1, p, d, c, relu_input=True),
               lambda x, w, p=p, d=d: F.conv2d(F.relu(x), w, None, 1, p, d, c))
    yield ("relu+pointwise", (c, c, 1, 1), lambda x, w: conv2d(x, w, relu_input=True),
           lambda x, w: F.conv2d(F.relu(x), w))
    yield ("max pool 3x3", None, lambda x: max_pool2d(x, 3, 1, 1), lambda x: F.max_pool2d(x, 3, 1, 1))
    yield ("avg pool 3x3", None, lambda x: avg_pool2d(x, 3, 1, 1, count_include_pad=False),
           lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    yield ("batch norm", None, lambda x: batch_norm(x, None, None, training=True),
           lambda x: F.batch_norm(x, None, None, training=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warn_if_busy()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"forward + backward (input and weight gradients), batch 64, {args.threads} threads, medians of "
          f"{args.rounds} alternating rounds\n")
    print("| op | input | PyTorch (ms) | dass (ms) | speed-up |\n|---|---|---|---|---|")
    for c, size in ((8, 32), (16, 16), (32, 8)):
        x = torch.randn(64, c, size, size, requires_grad=True)
        for name, wshape, ours, ref in ops(c):
            w = torch.randn(*wshape, requires_grad=True) if wshape else None
            inputs = (x, w) if w is not None else (x,)
            out_ours, out_ref = ours(*inputs), ref(*inputs)
            torch.testing.assert_close(out_ours, out_ref, rtol=1e-4, atol=1e-4)
            g = torch.randn_like(out_ref)
            fns = [lambda f=f: torch.autograd.grad(f(*inputs), inputs, g) for f in (ref, ours)]
            times = [[], []]
            for _ in range(args.rounds):
                for i, fn in enumerate(fns):
                    t0 = time.perf_counter()
                    fn()
                    times[i].append(time.perf_counter() - t0)
            t_ref, t_ours = (statistics.median(t) * 1e3 for t in times)
            print(f"| {name} | {c}x{size}x{size} | {t_ref:.2f} | {t_ours:.2f} | {t_ref / t_ours:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
