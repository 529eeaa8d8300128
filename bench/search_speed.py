"""Search speed and memory: a from-scratch reference DARTS supernet against dass's search modes.

Every mode runs in its own process (its own peak RSS) on the same CIFAR-10 subset batches and sizes
(8 initial channels, 5 cells, batch 64, 32x32, 2 threads, first-order steps: an architecture step on a
validation batch and a weight step on a training batch). The modes take their steps in turns (round 0 warms
up), and each reports the median of its timed steps: this machine's speed drifts by tens of percent over
minutes, and turns expose every mode to the same drift. Modes:

* reference: bench/reference_supernet.py (plain PyTorch, all 8 ops on every edge, full backward passes);
* exact:     dass's DASS supernet in its dense warm-up phase (same computation as the reference);
* exact-prune: the same in the prune phase (masked sparse layers, scores trained);
* pc4:       PC-DARTS partial channels (K=4) with edge normalization, warm-up phase.

Ends with ``speedup_exact: X`` (reference s/step over exact s/step). ``--paper`` also runs the paper's
search size (16 channels, 8 cells, batch 64) for the memory-light mode.

    python bench/search_speed.py [--steps 5] [--paper]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
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


def child(mode: str, channels: int, layers: int, batch: int, steps: int) -> None:
    """Set up one mode, then run one step per "step" line on stdin, answering its seconds; "done" answers the
    peak RSS. (Modes step in turns, so a slower or faster spell of this machine hits all of them alike.)"""
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
    data = batches(batch, steps)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            b = next(data)
            t0 = time.perf_counter()
            step(b)
            print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
        else:
            print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)
            return


class Mode:
    """One mode's child process."""

    def __init__(self, mode: str, channels: int, layers: int, batch: int, steps: int):
        self.mode, self.channels, self.layers, self.batch = mode, channels, layers, batch
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--channels", str(channels),
                                      "--layers", str(layers), "--batch", str(batch), "--steps", str(steps)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.times: list[float] = []

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"mode {self.mode} exited early")
            if line.startswith("{"):
                return json.loads(line)

    def wait_ready(self) -> None:
        while (line := self.proc.stdout.readline()) and line.strip() != "ready":
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--paper", action="store_true", help="also the paper's size (C=16, 8 cells) in PC mode")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.channels, args.layers, args.batch, args.steps)
        return
    from dass.runtime.load import warn_if_busy

    warn_if_busy()
    modes = [Mode(m, args.channels, args.layers, args.batch, args.steps)
             for m in ("reference", "exact", "exact-prune", "pc4")]
    if args.paper:
        modes.append(Mode("pc4", 16, 8, 64, args.steps))
    for m in modes:
        m.wait_ready()
    for r in range(args.steps + 1):       # round 0 warms up; each round steps every mode once, in turn
        for m in modes:
            t = m.ask("step")["seconds"]
            if r:
                m.times.append(t)
        print(f"round {r}: " + ", ".join(f"{m.mode}: {m.times[-1] if r else 0:.2f} s" for m in modes), flush=True)
    rss = [m.ask("done")["peak_rss_gb"] for m in modes]
    ref = statistics.median(modes[0].times)
    print(f"\n2 threads, 32x32 CIFAR-10 subset, first order; medians of {args.steps} steps taken in turns after "
          f"one warm-up round\n")
    print("| mode | C | cells | batch | s/step | speed-up vs reference | peak RSS (GB) |\n|---|---|---|---|---|---|---|")
    for m, peak in zip(modes, rss):
        same = m.channels == args.channels and m.layers == args.layers
        sec = statistics.median(m.times)
        print(f"| {m.mode} | {m.channels} | {m.layers} | {m.batch} | {sec:.2f} | "
              f"{ref / sec:.2f}x{'' if same else ' (other size)'} | {peak:.2f} |")
    per_round = [r / e for r, e in zip(modes[0].times, modes[1].times)]
    print(f"\nreference / exact per round: {', '.join(f'{x:.2f}' for x in per_round)}")
    print(f"\nspeedup_exact: {ref / statistics.median(modes[1].times):.2f}")


if __name__ == "__main__":
    main()
