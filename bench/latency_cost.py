"""Cells searched with the packed-runtime latency as the cost term against the nonzero-MAC cost and no cost:
accuracy and measured latency, on the reduced protocol of ``bench/paper_comparison.py`` (90% sparsity).

Stages (run it alone: stages 1 and 3 time things):
1. ``dass profile-ops`` for the search's supernet at 90% (fills the per-machine latency table the searches read);
2. per seed, a search with ``search.cost=macs`` and one with ``search.cost=latency`` (``search.cost_weight``
   0.5), then each cell trained and pruned as the comparison trains its cells (2 runs of 1 thread at a time);
   the cost-free arm is the comparison's own DASS search and training of the same seed, reused when present;
3. every trained network exported to the packed runtime and timed at batch 1, 2 threads, the networks in
   alternating rounds (medians).

Prints one row per run (genotype's ops, top-1, nonzero MACs, packed latency) and the means per arm, plus
``latency_cost_<arm>_top1: X`` / ``latency_cost_<arm>_ms: X`` lines.

    python bench/latency_cost.py [--seeds 0,1] [--weight 0.5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from paper_comparison import DATA, FULL, QUICK, run_tasks, search, train  # noqa: E402

ARMS = ("none", "macs", "latency")


def run_dirs(out: Path, paper: Path, seed: int, arm: str) -> tuple[Path, Path]:
    """(search, training) directories of an arm; the cost-free arm is the comparison's DASS run at 90%."""
    if arm == "none":
        return paper / f"seed{seed}" / "search_90", paper / f"seed{seed}" / "dass_90"
    return out / f"seed{seed}" / f"search_{arm}", out / f"seed{seed}" / f"train_{arm}"


def time_packed(runs: dict[str, Path], rounds: int) -> dict[str, float]:
    """Median ms per batch-1 call of each run's packed model, the models timed in alternating rounds."""
    import numpy as np

    from dass.deploy.export import export_run
    from dass.deploy.packed import PackedModel
    from dass.deploy.speed import median_times

    models = {}
    for key, run in runs.items():
        path = run / "model_packed.npz"
        if not path.exists():
            export_run(run)
        models[key] = PackedModel.load(path, threads=2)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    warm, _ = median_times([partial(m, x) for m in models.values()], rounds, 50, alternate=True)
    return {k: 1e3 * t for k, t in zip(models, warm)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "runs" / "latency_cost"))
    ap.add_argument("--paper", default=str(ROOT / "bench" / "runs" / "paper"),
                    help="the comparison's output (its DASS runs at 90% are the cost-free arm)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--weight", type=float, default=0.5, help="search.cost_weight of both cost arms")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from dass.runtime.load import warn_if_busy

    plan = QUICK if args.quick else FULL
    out, paper = Path(args.out), Path(args.paper)
    seeds = [int(s) for s in args.seeds.split(",")]
    warn_if_busy()
    start = time.time()
    sizes = dict(zip(plan["search"][::2], plan["search"][1::2]))   # (flag, value) pairs
    subprocess.run([sys.executable, "-m", "dass.cli", "profile-ops", "--dataset", str(DATA), "--sparsity", "0.9",
                    "--init-channels", sizes["--init-channels"], "--layers", sizes["--layers"]], check=True, cwd=ROOT)
    tasks = {}
    for seed in seeds:
        common = ["--dataset", str(DATA), "--threads", "1", "--quiet", "--seed", str(seed)]
        (out / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        for arm in ARMS:
            s_dir, t_dir = run_dirs(out, paper, seed, arm)
            arm_plan = dict(plan, search=[*plan["search"], "--set", f"search.cost={arm if arm != 'none' else 'macs'}",
                                          "--set", f"search.cost_weight={args.weight if arm != 'none' else 0}"])
            cell = plan["cell"]
            cell_args = ["--init-channels", str(cell["init_channels"]), "--layers", str(cell["layers"])]
            tasks[f"{seed}/{arm}/search"] = (partial(search, s_dir, common, arm_plan, 0.9, False), [])
            tasks[f"{seed}/{arm}/train"] = (
                lambda s_dir=s_dir, t_dir=t_dir, common=common, cell_args=cell_args: train(
                    t_dir, common, plan, 0.9, ["--genotype", str(s_dir / "genotype.json"), *cell_args]),
                [f"{seed}/{arm}/search"])
    run_tasks(tasks, args.jobs)
    print(f"\nsearch and training: {(time.time() - start) / 60:.1f} min")
    warn_if_busy()
    runs = {(seed, arm): run_dirs(out, paper, seed, arm)[1] for seed in seeds for arm in ARMS}
    ms = time_packed({f"{s}/{a}": d for (s, a), d in runs.items()}, args.rounds)
    warn_if_busy()
    print("\n| seed | cost term | normal cell ops | reduction cell ops | top-1 (%) | nonzero MACs | packed b1 (ms) |")
    print("|---|---|---|---|---|---|---|")
    per_arm: dict[str, list[tuple[float, float]]] = {a: [] for a in ARMS}
    for (seed, arm), run in runs.items():
        ev = json.loads((run / "eval.json").read_text())
        g = json.loads((run_dirs(out, paper, seed, arm)[0] / "genotype.json").read_text())
        ops = {kind: ", ".join(f"{op} x{n}" for op, n in sorted(Counter(op for op, _ in g[kind]).items()))
               for kind in ("normal", "reduce")}
        t = ms[f"{seed}/{arm}"]
        per_arm[arm].append((100 * ev["top1"], t))
        print(f"| {seed} | {arm} | {ops['normal']} | {ops['reduce']} | {100 * ev['top1']:.1f} | "
              f"{ev['sparse_macs']:,} | {t:.3f} |")
    print()
    for arm, rows in per_arm.items():
        print(f"latency_cost_{arm}_top1: {statistics.mean(a for a, _ in rows):.2f}")
        print(f"latency_cost_{arm}_ms: {statistics.mean(t for _, t in rows):.3f}")
    print(f"\nwall time: {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
