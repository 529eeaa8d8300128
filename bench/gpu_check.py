"""A prepared GPU check at the paper's size: seconds per step and peak memory by precision and memory format.

    python bench/gpu_check.py --device cuda            # when a GPU is lent (a few minutes)
    python bench/gpu_check.py --device cpu --quick     # a smoke test of the script itself

For each setting (fp32, bf16, fp16; NCHW and channels_last), it runs ``--steps`` second-order search steps
on the paper's supernet (C=16, 8 cells, batch 64, 90% sparsity, prune phase: the masked supernet) and
``--steps`` training steps of the DARTS_V2 network at the paper's size (C=36, 20 cells, batch 96) on CIFAR-10
images, after two warm-up steps, and prints one line per setting:

    gpu_search_<precision>_<format>: S s/step, M MiB peak
    gpu_train_<precision>_<format>: S s/step, M MiB peak

The second-order finite difference runs in float32 whatever the precision (see dass.runtime.precision).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dass.runtime import RunDir
from dass.search import make_config
from dass.search.searcher import DassSearch
from dass.train import TrainRun, make_train_config

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"


def _settings(device: str) -> list[tuple[str, bool]]:
    formats = [False, True] if device.startswith("cuda") else [False]   # channels_last is for GPUs
    return [(p, cl) for p in ("fp32", "bf16", "fp16") for cl in formats]


def _time(run, steps: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step over ``steps`` steps after 2 warm-up steps, and peak memory in MiB (CUDA only)."""
    batches = run.batches(0, 0)
    run.model.train()

    def step() -> None:
        from dass.runtime.device import to_device

        run.train_step(to_device(next(batches), run.device, run.config.channels_last))

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - t0) / steps, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    args = parser.parse_args()
    dataset = str(CIFAR) if CIFAR.is_file() else "digits"
    search_sets = ["model.init_channels=16", "model.layers=8", "search.batch_size=64", "search.order=2",
                   "search.sparsity=0.9"]
    train_sets = ["model.name=darts_v2", "model.init_channels=36", "model.layers=20", "train.batch_size=96"]
    if args.quick:
        search_sets = ["model.init_channels=4", "model.layers=3", "search.batch_size=16", "search.order=2",
                       "search.sparsity=0.9", "data.subset=256"]
        train_sets = ["model.name=darts_v2", "model.init_channels=4", "model.layers=3", "train.batch_size=16",
                      "data.subset=256"]
    for precision, channels_last in _settings(args.device):
        common = [f"device={args.device}", f"precision={precision}", f"channels_last={str(channels_last).lower()}",
                  f"data.dataset={dataset}"]
        fmt = "nhwc" if channels_last else "nchw"
        search = DassSearch(make_config("default", sets=search_sets + common), RunDir(Path(tempfile.mkdtemp())),
                            progress=False)
        search.position = {"phase": 1, "epoch": 0, "step": 0}   # the prune phase: the masked supernet
        search.enter_phase(1, fresh=True)
        search.set_epoch(0)
        if channels_last:
            search.model.to(memory_format=torch.channels_last)
        seconds, peak = _time(search, args.steps, search.device)
        print(f"gpu_search_{precision}_{fmt}: {seconds:.3f} s/step, {peak:.0f} MiB peak", flush=True)
        del search
        train = TrainRun(make_train_config("train-default", sets=train_sets + common), RunDir(Path(tempfile.mkdtemp())),
                         progress=False)
        train.enter_phase(0, fresh=True)
        train.set_epoch(0)
        if channels_last:
            train.model.to(memory_format=torch.channels_last)
        seconds, peak = _time(train, args.steps, train.device)
        print(f"gpu_train_{precision}_{fmt}: {seconds:.3f} s/step, {peak:.0f} MiB peak", flush=True)
        del train
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
