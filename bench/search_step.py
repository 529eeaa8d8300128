"""Seconds per search step and peak memory of the DASS supernet, per order and phase.

Each configuration runs in its own process (so peak RSS is its own) on the real CIFAR-10 subset,
at the size the issue asks about: 8 initial channels, 5 cells, batch 64, 32x32 inputs, 2 threads.

    python bench/search_step.py [--steps 3] [--channels 8] [--layers 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"


def child(order: int, phase: str, steps: int, channels: int, layers: int, batch: int) -> dict:
    import tempfile

    import torch

    from dass.runtime import RunDir
    from dass.search import make_config
    from dass.search.searcher import DassSearch

    torch.set_num_threads(2)
    cfg = make_config("default", {"data": {"dataset": str(DATA)},
                                  "model": {"init_channels": channels, "layers": layers},
                                  "search": {"order": order, "batch_size": batch}})
    search = DassSearch(cfg, RunDir(Path(tempfile.mkdtemp())), progress=False)
    index = {"warmup": 0, "prune": 1, "finetune": 2}[phase]
    search.enter_phase(index, fresh=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches = search.batches(0, 0)
    times = []
    for i, ((xt, yt), (xv, yv)) in enumerate(batches):
        if i > steps:
            break
        t0 = time.perf_counter()
        search.train_step(((xt, yt), (xv, yv)))
        times.append(time.perf_counter() - t0)
    timed = times[1:]  # the first step warms allocator and kernels
    return {"order": order, "phase": phase, "s_per_step": sum(timed) / len(timed),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_before_gb": rss_before / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--child", nargs=2, metavar=("ORDER", "PHASE"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.steps, args.channels, args.layers, args.batch)))
        return
    rows = []
    for order in (1, 2):
        for phase in ("warmup", "prune"):
            out = subprocess.run([sys.executable, __file__, "--child", str(order), phase, "--steps", str(args.steps),
                                  "--channels", str(args.channels), "--layers", str(args.layers),
                                  "--batch", str(args.batch)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    base = rows[0]["s_per_step"]
    print(f"\nC={args.channels}, {args.layers} cells, batch {args.batch}, 32x32, 2 threads, {args.steps} timed steps")
    print("| order | phase | s/step | vs 1st-order warm-up | peak RSS (GB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['order']} | {r['phase']} | {r['s_per_step']:.2f} | {r['s_per_step'] / base:.2f}x | {r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
