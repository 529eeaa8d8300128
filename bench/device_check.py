"""A short prepared check of ``--device``: a few search and training epochs on DEVICE beside the same on the CPU.

    python bench/device_check.py --device cuda      # when a GPU is lent; prints s/step, peak memory, agreement

Prints, per job, seconds per step on each device, the peak GPU memory (CUDA only), and how far the device's
result is from the CPU's (genotype equality, final loss difference). Float results differ across devices
(other kernels, other summation orders), so only closeness is expected, not bit equality.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from dass.search import make_config, search
from dass.train import make_train_config, train

SEARCH = ["data.subset=256", "search.epochs.warmup=1", "search.epochs.prune=1", "search.epochs.finetune=1"]
TRAIN = ["data.subset=256", "train.epochs.pretrain=1", "train.epochs.prune=1", "train.epochs.finetune=1"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _job(kind: str, device: str, out: Path) -> dict:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if kind == "search":
        result = search(make_config("default", sets=SEARCH), str(out), progress=False, device=device)
        summary = {"genotype": result.genotype.to_darts_string()}
    else:
        result = train(make_train_config("train-default", sets=TRAIN), str(out), progress=False, device=device)
        summary = {"test_acc": result.test_acc}
    records = _records(out)
    summary.update(seconds=time.perf_counter() - t0, s_per_step=records[-1]["seconds_per_step"],
                   train_loss=records[-1]["train_loss"])
    if device.startswith("cuda"):
        summary["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dass-device-"))
    for kind in ("search", "train"):
        cpu = _job(kind, "cpu", root / f"{kind}-reference")
        dev = _job(kind, args.device, root / f"{kind}-device")
        same = {k: cpu[k] == dev[k] for k in ("genotype", "test_acc") if k in cpu}
        print(f"{kind}: cpu {cpu['s_per_step']:.3f} s/step, {args.device} {dev['s_per_step']:.3f} s/step "
              f"(ratio {cpu['s_per_step'] / dev['s_per_step']:.2f}x); final train loss cpu {cpu['train_loss']:.4f} "
              f"vs {dev['train_loss']:.4f}; same result: {same}"
              + (f"; peak GPU memory {dev['peak_gb']:.2f} GiB" if "peak_gb" in dev else ""))


if __name__ == "__main__":
    main()
