"""Dense PyTorch and the packed runtime on one and on two threads, in turns, round after round.

This machine moves between speeds every few seconds; in some of its states two threads of the packed
runtime are no faster than one. Each line is one round (medians of a few calls each), so the states show
as runs of similar lines:

    python bench/runtime_threads.py [--network resnet18] [--sparsity 0.99] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from sparse_runtime import GENOTYPE, real_images  # noqa: E402

from dass.deploy.compiler import compile_model  # noqa: E402
from dass.deploy.export import synthetic_model  # noqa: E402
from dass.deploy.fold import fold_batchnorm  # noqa: E402
from dass.deploy.packed import PackedModel  # noqa: E402
from dass.runtime.load import warn_if_busy  # noqa: E402
from dass.space import Genotype  # noqa: E402


def median_ms(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--network", choices=["resnet18", "dass"], default="resnet18")
    ap.add_argument("--sparsity", type=float, default=0.99)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    warn_if_busy()
    images = real_images(64)
    spec = dict(width=1.0) if args.network == "resnet18" else \
        dict(genotype=Genotype.load(GENOTYPE), init_channels=36, layers=20)
    model = synthetic_model("resnet18" if args.network == "resnet18" else "genotype", args.sparsity, (3, 32, 32),
                            calibration=images, **spec).eval()
    dense = fold_batchnorm(model)
    program = compile_model(model, (3, 32, 32))
    one, two = PackedModel(program, threads=1), PackedModel(program, threads=2)
    x = images[:1]
    xn = x.numpy()
    torch.set_num_threads(2)
    print(f"{args.network} at {args.sparsity:.0%}, batch 1; ms per call, medians per round")
    print("| round | dense (2 threads) | packed 1 thread | packed 2 threads | speed-up 2 threads |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for r in range(args.rounds):
            d = median_ms(lambda: dense(x), 4)
            a = median_ms(lambda: one(xn), 15)
            b = median_ms(lambda: two(xn), 15)
            print(f"| {r} | {d:.2f} | {a:.3f} | {b:.3f} | {d / b:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
