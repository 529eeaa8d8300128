"""Every search method on the NAS-Bench-201 space, 3 seeds each, on the CIFAR-10 subset (a reduced CPU protocol).

For each method and seed: ``dass search --space nb201 --method M`` on the 4000-image subset (2000 images train
the weights, 2000 the architecture), then a short training of the derived cell from scratch on the same 4000
images, tested on the subset's 1000 test images. Every run prints

    nb201_<method>_seed<k>: |op~0|+|op~0|op~1|+|op~0|op~1|op~2|  short-train top-1 NN.N%

and the script ends with a table per method (the cells and the mean +- sd of the short training). The recorded
NAS-Bench-201 accuracy of a printed cell is one ``dass nb201 lookup ARCH --table FILE`` away for a user who has
the benchmark's file; dass neither ships nor fetches it, and nothing here was tuned against it.

The protocol (docs/method-notes.md, "NAS-Bench-201 on the CPU") scales the benchmark's DARTS setting (C=16, N=5,
50 epochs on 25k/25k images, about 20,000 architecture steps) down to C=8, N=1, 20 epochs on 2000/2000 images
(about 620 steps), with the architecture learning rate raised tenfold (3e-4 -> 3e-3) for the 30x fewer steps.
All methods run dense (the benchmark's accuracies are of dense networks); ``dass`` is the same search with
DASS's sparsity phases at 90%. Runs are skipped when their results exist, so an interrupted bench continues.

    python bench/nb201_search.py [--out bench/runs/nb201] [--threads 1] [--quick] [--methods darts,rarts]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"

DENSE = ["--set", "search.epochs.prune=0", "--set", "search.epochs.finetune=0"]
METHODS: dict[str, list[str]] = {   # the method's own settings beside the shared protocol
    "darts": ["--method", "darts", *DENSE],
    "darts-pt": ["--method", "darts-pt", *DENSE, "--set", "search.darts_pt.tune_epochs=1"],
    "darts-pt-fixed-alpha": ["--method", "darts-pt-fixed-alpha", *DENSE, "--set", "search.darts_pt.tune_epochs=1"],
    "rarts": ["--method", "rarts", *DENSE],
    "sd-darts": ["--method", "sd-darts", *DENSE],
    "sharp-darts": ["--method", "sharp-darts", *DENSE, "--set", "search.lr_schedule=cosine_power"],
    "dass": ["--method", "darts", "--sparsity", "0.9"],   # DASS: warm-up, prune, fine-tune (epochs below)
}
FULL = {
    "search": ["--init-channels", "8", "--layers", "1", "--batch-size", "64", "--order", "1",
               "--set", "search.weight_lr=0.025", "--set", "search.arch_lr=0.003"],
    "epochs": 20,
    "dass_epochs": ["--set", "search.epochs.warmup=10", "--set", "search.epochs.prune=5",
                    "--set", "search.epochs.finetune=5"],
    "train": ["--init-channels", "16", "--layers", "2", "--batch-size", "64", "--set", "train.epochs.pretrain=8",
              "--set", "train.epochs.prune=0", "--set", "train.epochs.finetune=0", "--set", "data.cutout=0"],
}
QUICK = {
    "search": ["--subset", "256", "--init-channels", "4", "--layers", "1", "--batch-size", "32", "--order", "1"],
    "epochs": 1,
    "dass_epochs": ["--set", "search.epochs.warmup=1", "--set", "search.epochs.prune=1",
                    "--set", "search.epochs.finetune=1"],
    "train": ["--subset", "256", "--init-channels", "4", "--layers", "1", "--batch-size", "64",
              "--set", "train.epochs.pretrain=1", "--set", "train.epochs.prune=0", "--set", "train.epochs.finetune=0"],
}


def dass(*args: str) -> str:
    """Run the dass CLI as a user would; its output is returned (and the command echoed)."""
    print("$ dass " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "dass.cli", *args], cwd=ROOT, check=True, text=True,
                          capture_output=True)
    return done.stdout


def arch_string(genotype: Path) -> str:
    from dass.space import load_genotype

    return str(load_genotype(str(genotype)))


def test_accuracy(run_dir: Path) -> float:
    """The last test accuracy the training logged (its final epoch)."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return float([r for r in rows if "test_acc" in r][-1]["test_acc"])


def one_run(method: str, seed: int, plan: dict, out: Path, threads: str) -> tuple[str, float]:
    common = ["--dataset", str(DATA), "--threads", threads, "--quiet", "--seed", str(seed)]
    search_dir, train_dir = out / f"{method}_seed{seed}" / "search", out / f"{method}_seed{seed}" / "train"
    epochs = plan["dass_epochs"] if method == "dass" else ["--set", f"search.epochs.warmup={plan['epochs']}"]
    if (search_dir / "checkpoint.pt").exists() and not (search_dir / "genotype.json").exists():
        dass("search", "--resume", str(search_dir), "--quiet")      # an interrupted earlier run of this script
    elif not (search_dir / "genotype.json").exists():
        dass("search", "--space", "nb201", *common, *plan["search"], *METHODS[method], *epochs,
             "--out", str(search_dir))
    if (train_dir / "checkpoint.pt").exists() and not (train_dir / "model_sparse.pt").exists():
        dass("train", "--resume", str(train_dir), "--quiet")
    elif not (train_dir / "model_sparse.pt").exists():
        dass("train", "--genotype", str(search_dir / "genotype.json"), *common, *plan["train"], "--out", str(train_dir))
    return arch_string(search_dir / "genotype.json"), test_accuracy(train_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "runs" / "nb201"))
    ap.add_argument("--quick", action="store_true", help="a smoke run of the whole flow; its numbers mean nothing")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", default="1", help="torch threads per run (1 leaves a core for other work)")
    args = ap.parse_args()
    from dass.runtime.load import warn_if_busy

    warn_if_busy()
    plan, out = (QUICK if args.quick else FULL), Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    start, results = time.time(), {}
    for method in methods:
        for seed in seeds:
            t0 = time.time()
            arch, acc = one_run(method, seed, plan, out, args.threads)
            results[(method, seed)] = (arch, acc)
            print(f"nb201_{method}_seed{seed}: {arch}  short-train top-1 {100 * acc:.1f}%  "
                  f"({(time.time() - t0) / 60:.1f} min)", flush=True)
    print(f"\nwall time: {(time.time() - start) / 60:.1f} min\n")
    print("| method | cells (seeds " + ", ".join(map(str, seeds)) + ") | short-train top-1, mean +- sd |")
    print("|---|---|---|")
    for method in methods:
        accs = [100 * results[(method, s)][1] for s in seeds]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        cells = "<br>".join(results[(method, s)][0].replace("|", "\\|") for s in seeds)   # | inside a table cell
        print(f"| {method} | {cells} | {statistics.mean(accs):.1f} +- {sd:.1f} |")


if __name__ == "__main__":
    main()
