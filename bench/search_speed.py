"""Search speed and memory: a from-scratch reference DARTS supernet against dass's search modes.

Every mode runs in its own process (its own peak RSS) on the same CIFAR-10 subset batches and sizes
(8 initial channels, 5 cells, batch 64, 32x32, 2 threads, first-order steps: an architecture step on a
validation batch and a weight step on a training batch), one warm-up step then the mean of the timed
steps. Modes:

* reference: bench/reference_supernet.py (plain PyTorch, all 8 ops on every edge, full backward passes);
* exact:     dass's DASS supernet in its dense warm-up phase (same computation as the reference);
* exact-prune: the same in the prune phase (masked sparse layers, scores trained);
* pc4:       PC-DARTS partial channels (K=4) with edge normalization, warm-up phase.

Ends with ``speedup_exact: X`` (reference s/step over exact s/step). ``--paper`` also runs the paper's
search size (16 channels, 8 cells, batch 64) for the memory-light mode.

    python bench/search_speed.py [--steps 3] [--paper]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def batches(batch: int, steps: int):
    import torch

    from dass.data import Normalization, load_dataset

    data = load_dataset(str(DATA))
    norm = Normalization.fit(data.x_train)
    x, y = norm(data.x_train), torch.from_numpy(data.y_train)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps + 1):
        i, j = torch.randint(0, len(x), (batch,), generator=g), torch.randint(0, len(x), (batch,), generator=g)
        yield (x[i].contiguous(), y[i]), (x[j].contiguous(), y[j])   # as the training loader gives them


def child(mode: str, channels: int, layers: int, batch: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    if mode == "reference":
        from reference_supernet import ReferenceSearch, ReferenceSupernet

        search = ReferenceSearch(ReferenceSupernet(channels, layers))
        step = lambda b: search.step(*b[0], *b[1])  # noqa: E731
    else:
        from dass.runtime import RunDir
        from dass.search import make_config
        from dass.search.searcher import DassSearch

        partial = 4 if mode.startswith("pc") else 1
        cfg = make_config("default", {"data": {"dataset": str(DATA)},
                                      "model": {"init_channels": channels, "layers": layers,
                                                "partial_channels": partial},
                                      "search": {"order": 1, "batch_size": batch}})
        dass = DassSearch(cfg, RunDir(Path(tempfile.mkdtemp())), progress=False)
        dass.enter_phase(1 if mode.endswith("prune") else 0, fresh=True)
        step = dass.train_step
    times = []
    for b in batches(batch, steps):
        t0 = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t0)
    timed = times[1:]
    return {"mode": mode, "channels": channels, "layers": layers, "batch": batch,
            "s_per_step": sum(timed) / len(timed), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run(mode: str, channels: int, layers: int, batch: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--channels", str(channels), "--layers",
                          str(layers), "--batch", str(batch), "--steps", str(steps)],
                         capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--paper", action="store_true", help="also the paper's size (C=16, 8 cells) in PC mode")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.channels, args.layers, args.batch, args.steps)))
        return
    rows = [run(mode, args.channels, args.layers, args.batch, args.steps)
            for mode in ("reference", "exact", "exact-prune", "pc4")]
    if args.paper:
        rows.append(run("pc4", 16, 8, 64, args.steps))
    ref = rows[0]["s_per_step"]
    print(f"\n2 threads, 32x32 CIFAR-10 subset, {args.steps} timed steps after one warm-up step, first order\n")
    print("| mode | C | cells | batch | s/step | speed-up vs reference | peak RSS (GB) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        same = r["channels"] == args.channels and r["layers"] == args.layers
        print(f"| {r['mode']} | {r['channels']} | {r['layers']} | {r['batch']} | {r['s_per_step']:.2f} | "
              f"{ref / r['s_per_step']:.2f}x{'' if same else ' (other size)'} | {r['peak_rss_gb']:.2f} |")
    print(f"\nspeedup_exact: {ref / rows[1]['s_per_step']:.2f}")


if __name__ == "__main__":
    main()
