"""Several jobs on one machine: what OpenMP's wait policy does to a job alone and to two jobs at once.

    python bench/concurrency.py [--steps 6] [--quick]

Each measurement runs in its own process (the wait policy is read when OpenMP starts):

1. **Alone**, each workload under each wait policy of ``POLICIES`` (spinning; libgomp's default spin count;
   a short spin; passive), in alternating rounds: ``cost_alone_<policy>_<workload>: X`` is its time over the
   spinning time (1.0: the policy costs nothing when the job has the machine to itself). Workloads: ``search`` (DASS search steps: CIFAR-10
   subset, 90% sparsity, C=4, 3 cells, batch 32, second order), ``packed`` (ResNet-18 at 90% in the packed
   runtime, batch 1, 2 threads), ``kernels`` (a separable 3x3 conv forward and backward through dass's
   training kernels, batch 32, 16 channels, 32x32).
2. **Two search jobs at once** (same config, started together, default thread count each), per policy:
   ``slowdown_two_jobs_<policy>: X`` is their mean time per step over the time alone under that policy (ideal
   2.0 on two cores; bounded by a time limit: ``>`` means the jobs had not finished when it ran out), and
   ``slowdown_two_jobs: X`` the same for dass's default policy (target <= 2.5).

Seconds per step are medians over the timed steps, after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
WORKLOADS = ("search", "packed", "kernels")
# OpenMP wait policies (libgomp): how long a thread spins at a barrier before it sleeps
POLICIES = {
    "spin": {"OMP_WAIT_POLICY": "ACTIVE"},        # spin (30 billion iterations): OpenMP's ACTIVE
    "gomp": {"GOMP_SPINCOUNT": "300000"},         # libgomp's default when no policy is set
    "short": {"GOMP_SPINCOUNT": "1000"},          # spin about a microsecond, then sleep (dass's default)
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},    # sleep at once
}
ACTIVE_LIMIT_S = 150.0


# -- children ---------------------------------------------------------------------------------------------
def _search_steps(steps: int, quick: bool) -> list[float]:
    from dass.runtime import RunDir
    from dass.runtime.device import to_device
    from dass.search import make_config
    from dass.search.searcher import DassSearch

    dataset = str(CIFAR) if CIFAR.is_file() else "digits"
    sets = [f"data.dataset={dataset}", "data.subset=1000", "search.sparsity=0.9", "model.init_channels=4",
            "model.layers=3", "search.batch_size=32"] + (["model.nodes=2", "model.multiplier=2"] if quick else [])
    run = DassSearch(make_config("default", sets=sets), RunDir(Path(tempfile.mkdtemp())), progress=False)
    run.enter_phase(0, fresh=True)
    run.set_epoch(0)
    run.model.train()
    batches = run.batches(0, 0)
    times = []
    for _ in range(steps + 1):
        batch = to_device(next(batches), run.device)
        t0 = time.perf_counter()
        run.train_step(batch)
        times.append(time.perf_counter() - t0)
    return times[1:]


def _packed_calls(steps: int, quick: bool) -> list[float]:
    import numpy as np

    from dass.deploy.compiler import compile_model
    from dass.deploy.export import synthetic_model
    from dass.deploy.packed import PackedModel

    width = {"width": 0.25} if quick else {}
    model = PackedModel(compile_model(synthetic_model("resnet18", 0.9, (3, 32, 32), **width), (3, 32, 32)), threads=2)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    model(x)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        for _ in range(20):
            model(x)
        times.append((time.perf_counter() - t0) / 20)
    return times


def _kernel_steps(steps: int, quick: bool) -> list[float]:
    import torch

    from dass.space.ops import build_op

    torch.manual_seed(0)
    op = build_op("sep_conv_3x3", 16, 1, affine=False)
    x = torch.randn(32 if not quick else 8, 16, 32, 32, requires_grad=True)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        op(x).square().mean().backward()
        times.append(time.perf_counter() - t0)
    return times[1:]


CHILDREN = {"search": _search_steps, "packed": _packed_calls, "kernels": _kernel_steps}


def _child(kind: str, steps: int, quick: bool, out: Path) -> None:
    out.write_text(json.dumps(CHILDREN[kind](steps, quick)))


# -- the parent -----------------------------------------------------------------------------------------------
def _start(kind: str, policy: str, steps: int, quick: bool, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(POLICIES[policy])   # (OMP_NUM_THREADS unset: each job takes dass's default thread count)
    command = [sys.executable, __file__, "--child", kind, "--steps", str(steps), "--out", str(out)]
    return subprocess.Popen(command + (["--quick"] if quick else []), env=env)


def _median_step(out: Path) -> float:
    return statistics.median(json.loads(out.read_text()))


def alone(kind: str, policy: str, steps: int, quick: bool) -> float:
    out = Path(tempfile.mktemp(suffix=".json"))
    proc = _start(kind, policy, steps, quick, out)
    if proc.wait() != 0:
        raise SystemExit(f"the {kind} child failed under {policy}")
    return _median_step(out)


def together(policy: str, steps: int, quick: bool, limit: float | None) -> tuple[float, bool]:
    """Mean of the two jobs' median s/step, and whether both finished in ``limit`` seconds."""
    outs = [Path(tempfile.mktemp(suffix=".json")) for _ in range(2)]
    procs = [_start("search", policy, steps, quick, out) for out in outs]
    t0 = time.monotonic()
    finished = True
    for proc in procs:
        left = None if limit is None else max(1.0, limit - (time.monotonic() - t0))
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            finished = False
    if not finished:
        for proc in procs:
            proc.kill()
            proc.wait()
        # a lower bound: the whole time they had, over the steps they were asked for (+ the warm-up)
        return (time.monotonic() - t0) / (steps + 1), False
    return statistics.mean(_median_step(out) for out in outs), True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller workloads and one round: a smoke run")
    ap.add_argument("--child", choices=WORKLOADS)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.steps, args.quick, Path(args.out))
        return
    from dass.runtime.load import load_warning

    warning = load_warning(1.0)
    if warning:
        print(warning, flush=True)
    rounds = 1 if args.quick else args.rounds
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for kind in WORKLOADS:
            for policy in POLICIES:
                times.setdefault((kind, policy), []).append(alone(kind, policy, args.steps, args.quick))
    single = {key: statistics.median(value) for key, value in times.items()}
    for kind in WORKLOADS:
        print(f"{kind} alone, ms/step: " + ", ".join(f"{p} {1e3 * single[(kind, p)]:.2f}" for p in POLICIES),
              flush=True)
    pairs: dict[str, tuple[float, bool]] = {}
    for policy in POLICIES:
        pairs[policy] = together(policy, args.steps, args.quick, ACTIVE_LIMIT_S)
        two, done = pairs[policy]
        print(f"two search jobs at once, {policy}: {'>' if not done else ''}{two:.3f} s/step each "
              f"(alone {single[('search', policy)]:.3f})", flush=True)
    for kind in WORKLOADS:   # what each policy costs a job alone, against spinning
        for policy in ("gomp", "short", "passive"):
            print(f"cost_alone_{policy}_{kind}: {single[(kind, policy)] / single[(kind, 'spin')]:.3f}")
    for policy in POLICIES:
        two, done = pairs[policy]
        print(f"slowdown_two_jobs_{policy}: {'>' if not done else ''}{two / single[('search', policy)]:.2f}")
    default = dass_default_policy()
    two, done = pairs[default]
    print(f"slowdown_two_jobs: {'>' if not done else ''}{two / single[('search', default)]:.2f}")


def dass_default_policy() -> str:
    """The policy dass sets when the environment names none (see dass/__init__.py)."""
    import dass

    return next(name for name, env in POLICIES.items() if env == dass.DEFAULT_OPENMP_ENV)

if __name__ == "__main__":
    main()
