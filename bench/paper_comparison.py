"""The paper's comparison on a reduced CPU protocol, several seeds: cells searched for sparsity vs the alternatives.

Per seed: a dense DARTS search (warm-up only: the ablation the paper's claim rests on, a cell found without
pruning and then pruned) and a random cell. Per sparsity and seed: a DASS search at that sparsity. Then, per
sparsity and seed, trained alike with HYDRA pruning to that sparsity (pretrain, prune, fine-tune):

* ``dass``        the DASS cell            * ``darts_v2``  DARTS' published cell
* ``dense_darts`` the dense-search cell    * ``random``    the random cell          (all at the same C and cells)
* ``mobilenet_v2_p`` / ``resnet18_p``: width matched to the DASS network's parameters (so nonzero parameters)
* ``mobilenet_v2_m`` / ``resnet18_m``: width matched to its multiply-adds (so nonzero multiply-adds, as every
  layer is pruned to the same sparsity)

and tested on the subset's 1000 test images. The tables give mean +- sd over seeds; the plots (PNG) accuracy vs
sparsity per model and accuracy vs packed-runtime latency. The protocol is written in docs/method-notes.md.

Everything goes through the `dass` command line, as a user would run it. Stages:

    python bench/paper_comparison.py [--out bench/runs/paper] [--seeds 0,1,2] [--quick]   # train and test
    python bench/paper_comparison.py --latency         # then, on an idle machine: packed latency of seed 0's models

The first stage only measures accuracy (no timing), so it may share the machine; it runs ``--jobs`` runs at a time
(each a `dass` process of ``--threads`` threads; on 2 cores two 1-thread runs finish more work than one 2-thread
run) and resumes where it stopped (finished runs are skipped, interrupted ones continue from their checkpoint), so
it can be spread over several sessions. ``--report`` prints the tables and plots of whatever has finished.
``--quick`` is a smoke run of the whole flow in a few minutes; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
DOCS = ROOT / "docs"

CELL_MODELS = ("dass", "darts_v2", "dense_darts", "random")
BASELINES = ("mobilenet_v2", "resnet18")
MODELS = CELL_MODELS + tuple(f"{b}_{m}" for m in ("p", "m") for b in BASELINES)

FULL = {  # sized for about 2 hours of the first stage with --jobs 2 on 2 cores (docs/method-notes.md)
    # arch_lr 3e-3 (DARTS: 3e-4) because this search takes ~150 architecture steps, not ~20,000
    "search": ["--subset", "1200", "--init-channels", "4", "--layers", "5", "--batch-size", "64", "--order", "1",
               "--set", "search.arch_lr=0.003"],
    "search_epochs": {"warmup": 6, "prune": 3, "finetune": 3},
    "cell": {"init_channels": 8, "layers": 5},
    "train": ["--batch-size", "64", "--set", "train.epochs.pretrain=4", "--set", "train.epochs.prune=2",
              "--set", "train.epochs.finetune=2", "--set", "data.cutout=8"],
}
QUICK = {
    "search": ["--subset", "128", "--init-channels", "4", "--layers", "3", "--batch-size", "32", "--order", "1"],
    "search_epochs": {"warmup": 1, "prune": 1, "finetune": 1},
    "cell": {"init_channels": 4, "layers": 3},
    "train": ["--subset", "256", "--batch-size", "64", "--epochs", "1"],
}


def dass(*args: str) -> None:
    print("$ dass " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "dass.cli", *args], check=True, cwd=ROOT)


def counts_of(name: str, **kwargs) -> tuple[int, int]:
    """(parameters, dense multiply-adds) of a model at CIFAR size."""
    from dass.metrics import count
    from dass.models import build_model

    if "genotype" in kwargs:
        from dass.space import Genotype

        kwargs["genotype"] = Genotype.load(kwargs["genotype"])
    c = count(build_model(name, **kwargs), (3, 32, 32))
    return c.params, c.macs


def matched_width(name: str, target: int, by: int) -> float:
    """The width multiplier whose count (``by``: 0 parameters, 1 multiply-adds) is closest to ``target``; both
    grow about as width^2."""
    guess = math.sqrt(target / counts_of(name)[by])
    grid = [round(guess * f, 4) for f in (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15)]
    return min(grid, key=lambda w: abs(counts_of(name, width=w)[by] - target))


def search(out: Path, common: list[str], plan: dict, sparsity: float, dense: bool) -> None:
    """A search (run, resumed, or found done); ``dense``: warm-up only, for as many epochs as all phases."""
    if (out / "checkpoint.pt").exists() and not (out / "genotype.json").exists():
        dass("search", "--resume", str(out), "--quiet")
    elif not (out / "genotype.json").exists():
        e = dict(plan["search_epochs"], **({"warmup": sum(plan["search_epochs"].values()), "prune": 0,
                                           "finetune": 0} if dense else {}))
        dass("search", *common, "--sparsity", str(sparsity), *plan["search"], "--out", str(out),
             *[a for k, v in e.items() for a in ("--set", f"search.epochs.{k}={v}")])


def train(out: Path, common: list[str], plan: dict, sparsity: float, model_args: list[str]) -> None:
    if (out / "checkpoint.pt").exists() and not (out / "model_sparse.pt").exists():
        dass("train", "--resume", str(out), "--quiet")
    elif not (out / "model_sparse.pt").exists():
        dass("train", *common, "--sparsity", str(sparsity), *model_args, *plan["train"], "--out", str(out))
    if not (out / "eval.json").exists():
        dass("eval", str(out), "--no-latency")


def model_args(name: str, seed_dir: Path, tag: str, plan: dict) -> list[str]:
    """The `dass train` arguments of a model (a baseline's width is matched once its DASS cell exists)."""
    cell = plan["cell"]
    cell_args = ["--init-channels", str(cell["init_channels"]), "--layers", str(cell["layers"])]
    found = seed_dir / f"search_{tag}" / "genotype.json"
    cells = {"dass": found, "dense_darts": seed_dir / "search_dense" / "genotype.json",
             "random": seed_dir / "random_genotype.json"}
    if name in cells:
        return ["--genotype", str(cells[name]), *cell_args]
    if name == "darts_v2":
        return ["--model", "darts_v2", *cell_args]
    base, by = name.rsplit("_", 1)
    target = counts_of("genotype", genotype=str(found), **cell)[0 if by == "p" else 1]
    return ["--model", base, "--set", f"model.width={matched_width(base, target, 0 if by == 'p' else 1)}"]


Task = tuple[Callable[[], None], list[str]]   # what to run, the tasks it waits for


def run_tasks(tasks: dict[str, Task], jobs: int) -> None:
    """Run the tasks, ``jobs`` at a time, each once the tasks it waits for are done (in the order given
    otherwise: the searches first, as most trainings wait for them)."""
    pending, running, done = dict(tasks), {}, set()
    with ThreadPoolExecutor(jobs) as pool:
        while pending or running:
            for key in [k for k, (_, deps) in pending.items() if all(d in done for d in deps)]:
                if len(running) >= jobs:
                    break
                running[pool.submit(pending.pop(key)[0])] = key
            if not running:
                raise RuntimeError(f"tasks wait for tasks that do not exist: {sorted(pending)}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()   # a failed run stops the bench (finished runs are kept for the next start)
                done.add(running.pop(future))


def run_all(out: Path, plan: dict, sparsities: list[float], seeds: list[int], threads: str, jobs: int) -> None:
    from dass.space import PRIMITIVES, random_genotype

    searches: dict[str, Task] = {}
    trainings: dict[str, Task] = {}
    for seed in seeds:
        common = ["--dataset", str(DATA), "--threads", threads, "--quiet", "--seed", str(seed)]
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        if not (seed_dir / "random_genotype.json").exists():
            random_genotype(seed, PRIMITIVES).save(seed_dir / "random_genotype.json")
        dense = f"seed{seed}/search_dense"
        searches[dense] = (partial(search, out / dense, common, plan, 0.9, True), [])
        for sparsity in sparsities:
            tag = f"{round(sparsity * 100)}"
            found = f"seed{seed}/search_{tag}"
            searches[found] = (partial(search, out / found, common, plan, sparsity, False), [])
            for name in MODELS:
                deps = {"darts_v2": [], "random": [], "dense_darts": [dense]}.get(name, [found])
                run = lambda name=name, seed_dir=seed_dir, tag=tag, sparsity=sparsity, common=common: train(
                    seed_dir / f"{name}_{tag}", common, plan, sparsity, model_args(name, seed_dir, tag, plan))
                trainings[f"seed{seed}/{name}_{tag}"] = (run, deps)
    run_tasks({**searches, **trainings}, jobs)


def collect(out: Path) -> dict[tuple[str, int], list[dict]]:
    """Every finished evaluation, by (model, sparsity %)."""
    results: dict[tuple[str, int], list[dict]] = {}
    for path in sorted(out.glob("seed*/*_*/eval.json")):
        name, _, tag = path.parent.name.rpartition("_")
        if name in MODELS and tag.isdigit():
            results.setdefault((name, int(tag)), []).append(json.loads(path.read_text()))
    return results


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.1f} +- {sd:.1f} (n={len(values)})"


def report(out: Path, sparsities: list[int], plots: bool) -> None:
    results = collect(out)
    for title, names in (("matched parameters", CELL_MODELS + tuple(f"{b}_p" for b in BASELINES)),
                         ("matched multiply-adds", ("dass",) + tuple(f"{b}_m" for b in BASELINES))):
        print(f"\ntop-1 (%), mean +- sd over seeds, {title}:\n")
        print("| model | " + " | ".join(f"{p}%" for p in sparsities) + " | nonzero params / MACs at " +
              f"{sparsities[0]}% |")
        print("|---|" + "---|" * (len(sparsities) + 1))
        for name in names:
            cells = [mean_sd([100 * r["top1"] for r in results[(name, p)]]) if (name, p) in results else "-"
                     for p in sparsities]
            first = results.get((name, sparsities[0]))
            size = (f"{statistics.mean(r['nonzero_params'] for r in first):,.0f} / "
                    f"{statistics.mean(r['sparse_macs'] for r in first):,.0f}") if first else "-"
            print(f"| {name} | " + " | ".join(cells) + f" | {size} |")
    paired(out, sparsities)
    for (name, p), rows in sorted(results.items()):
        print(f"paper_{name}_{p}: {statistics.mean(100 * r['top1'] for r in rows):.2f}")
    if plots:
        plot(results, sparsities, out)


def paired(out: Path, sparsities: list[int]) -> None:
    """The DASS cell minus each other model, seed by seed (the same search and training seed): mean +- sd of
    the differences and a two-sided paired t-test, so that a margin can be told from the seed-to-seed spread."""
    from scipy.stats import ttest_rel

    def top1(name: str, seed_dir: Path, p: int) -> float | None:
        path = seed_dir / f"{name}_{p}" / "eval.json"
        return 100 * json.loads(path.read_text())["top1"] if path.exists() else None

    print("\nDASS cell minus each model, paired by seed (points; mean +- sd, paired t-test p):\n")
    print("| model | " + " | ".join(f"{p}%" for p in sparsities) + " |")
    print("|---|" + "---|" * len(sparsities))
    for name in MODELS[1:]:
        cells = []
        for p in sparsities:
            pairs = [(a, b) for d in sorted(out.glob("seed*"))
                     if (a := top1("dass", d, p)) is not None and (b := top1(name, d, p)) is not None]
            if len(pairs) < 2:
                cells.append("-")
                continue
            diffs = [a - b for a, b in pairs]
            test = ttest_rel([a for a, _ in pairs], [b for _, b in pairs])
            pval = f"{test.pvalue:.2f}" if test.pvalue == test.pvalue else "-"
            cells.append(f"{statistics.mean(diffs):+.1f} +- {statistics.stdev(diffs):.1f} (p={pval}, n={len(diffs)})")
        print(f"| {name} | " + " | ".join(cells) + " |")


def plot(results: dict[tuple[str, int], list[dict]], sparsities: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in MODELS:
        xs = [p for p in sparsities if (name, p) in results]
        if xs:
            accs = [[100 * r["top1"] for r in results[(name, p)]] for p in xs]
            ax.errorbar(xs, [statistics.mean(a) for a in accs],
                        yerr=[statistics.stdev(a) if len(a) > 1 else 0 for a in accs], marker="o", capsize=3,
                        label=name)
    ax.set(xlabel="sparsity (%)", ylabel="top-1 (%), mean +- sd", title="CIFAR-10 subset, reduced protocol")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_sparsity.png", dpi=120)
    timed = {k: [r for r in v if "packed_latency_b1_ms" in r] for k, v in results.items()}
    if any(timed.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        markers = dict(zip(sparsities, "os^Dv"))
        for k, name in enumerate(MODELS):
            for p in sparsities:
                pts = [(r["packed_latency_b1_ms"], 100 * r["top1"]) for r in timed.get((name, p), [])]
                if pts:
                    ax.scatter(*zip(*pts), color=f"C{k}", marker=markers.get(p, "o"),
                               label=name if p == sparsities[0] else None)
        ax.set(xlabel="packed runtime latency, batch 1 (ms)", ylabel="top-1 (%)", xscale="log",
               title="accuracy vs latency, seed 0 (" + ", ".join(f"{m} {p}%" for p, m in markers.items()) + ")")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "accuracy_vs_latency.png", dpi=120)
    print(f"\nplots: {out / 'accuracy_vs_sparsity.png'}, {out / 'accuracy_vs_latency.png'} (once timed)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "runs" / "paper"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sparsities", default="0.9,0.95,0.99")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", default="1", help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (on 2 cores: 2 runs of 1 thread each)")
    ap.add_argument("--latency", action="store_true", help="time seed 0's trained models (idle machine)")
    ap.add_argument("--report", action="store_true", help="only print the tables and plots of what has finished")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    pcts = [round(s * 100) for s in sparsities]
    start = time.time()
    if args.latency:
        from dass.runtime.load import warn_if_busy

        warn_if_busy()
        for path in sorted(out.glob("seed0/*_*/model_sparse.pt")):
            dass("eval", str(path.parent))
        warn_if_busy()
    elif not args.report:
        run_all(out, plan, sparsities, [int(s) for s in args.seeds.split(",")], args.threads, args.jobs)
    print(f"\nwall time: {(time.time() - start) / 60:.1f} min")
    report(out, pcts, plots=True)


if __name__ == "__main__":
    main()
