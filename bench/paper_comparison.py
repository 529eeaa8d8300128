"""The paper's comparison on a reduced CPU protocol: searched sparse cells vs pruned hand-designed networks.

For each sparsity (99% and 90%): a DASS search on the CIFAR-10 subset, then the found cell, DARTS_V2,
MobileNet-v2 and ResNet-18 trained with identical epochs and HYDRA pruning to that sparsity, their
widths chosen so that their parameter counts (and so their nonzero budgets) are as close to the
searched network's as the sizes allow. Ends with the table of `dass compare`.

All work goes through the `dass` command line, exactly as a user would run it:

    python bench/paper_comparison.py [--out bench/runs/paper] [--quick]

``--quick`` is a smoke run of the whole flow in a few minutes; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"

FULL = {  # sized so the whole script runs in about 75 minutes on 2 idle cores
    # arch_lr 3e-3 (DARTS: 3e-4) because this search takes ~200 architecture steps, not ~20,000
    "search": ["--subset", "1600", "--init-channels", "4", "--layers", "5", "--batch-size", "64", "--order", "1",
               "--set", "search.epochs.warmup=8", "--set", "search.epochs.prune=4", "--set", "search.epochs.finetune=4",
               "--set", "search.arch_lr=0.003"],
    "cell": {"init_channels": 8, "layers": 8},
    "train": ["--batch-size", "64", "--set", "train.epochs.pretrain=4", "--set", "train.epochs.prune=2",
              "--set", "train.epochs.finetune=2", "--set", "data.cutout=8"],
}
QUICK = {
    "search": ["--subset", "128", "--init-channels", "4", "--layers", "3", "--batch-size", "32", "--order", "1",
               "--epochs", "1"],
    "cell": {"init_channels": 4, "layers": 3},
    "train": ["--subset", "256", "--batch-size", "64", "--epochs", "1"],
}


def dass(*args: str) -> None:
    cmd = [sys.executable, "-m", "dass.cli", *args]
    print("$ dass " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def params_of(name: str, **kwargs) -> int:
    from dass.metrics import count
    from dass.models import build_model

    if "genotype" in kwargs:
        from dass.space import Genotype

        kwargs["genotype"] = Genotype.load(kwargs["genotype"])
    return count(build_model(name, **kwargs), (3, 32, 32)).params


def matched_width(name: str, target: int) -> float:
    """The width multiplier whose parameter count is closest to ``target`` (params grow ~ width^2)."""
    guess = math.sqrt(target / params_of(name))
    grid = [round(guess * f, 4) for f in (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15)]
    return min(grid, key=lambda w: abs(params_of(name, width=w) - target))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "runs" / "paper"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sparsities", default="0.99,0.9")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--dataset", str(DATA), "--threads", "2", "--quiet"]
    cell = plan["cell"]
    cell_args = ["--init-channels", str(cell["init_channels"]), "--layers", str(cell["layers"])]
    start = time.time()
    runs = []
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        tag = f"{round(sparsity * 100)}"
        search_dir = out / f"search_{tag}"
        if (search_dir / "checkpoint.pt").exists() and not (search_dir / "genotype.json").exists():
            dass("search", "--resume", str(search_dir), "--quiet")  # an interrupted earlier run of this script
        elif not (search_dir / "genotype.json").exists():
            dass("search", *common, "--sparsity", str(sparsity), *plan["search"], "--out", str(search_dir))
        # the baselines' widths match the parameter count of the network built from the found cell
        target = params_of("genotype", genotype=str(search_dir / "genotype.json"), **cell)
        widths = {name: matched_width(name, target) for name in ("mobilenet_v2", "resnet18")}
        models = {
            f"dass_{tag}": ["--genotype", str(search_dir / "genotype.json"), *cell_args],
            f"darts_v2_{tag}": ["--model", "darts_v2", *cell_args],
            f"mobilenet_v2_{tag}": ["--model", "mobilenet_v2", "--set", f"model.width={widths['mobilenet_v2']}"],
            f"resnet18_{tag}": ["--model", "resnet18", "--set", f"model.width={widths['resnet18']}"],
        }
        for name, model_args in models.items():
            run_dir = out / name
            if (run_dir / "checkpoint.pt").exists() and not (run_dir / "model_sparse.pt").exists():
                dass("train", "--resume", str(run_dir), "--quiet")
            elif not (run_dir / "model_sparse.pt").exists():
                dass("train", *common, "--sparsity", str(sparsity), *model_args, *plan["train"], "--out", str(run_dir))
            if not (run_dir / "eval.json").exists():
                dass("eval", str(run_dir))
            runs.append(str(run_dir))
    print(f"\nwall time: {(time.time() - start) / 60:.1f} min\n", flush=True)
    dass("compare", *runs)


if __name__ == "__main__":
    main()
