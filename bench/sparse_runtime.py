"""Dense PyTorch and ONNX Runtime against the packed sparse runtime, for a pruned ResNet-18 and a DASS network.

For each network and sparsity (90%, 95%, 99%): the network pruned per layer by weight magnitude (its
nonzero pattern is what HYDRA/magnitude pruning leaves at that sparsity; training does not change the
cost), batch norm calibrated on real CIFAR-10 images, then dense PyTorch (masks materialized, BN folded),
ONNX Runtime (the same folded model exported to ONNX, dense kernels, full graph optimisation: what a user
would deploy with) and the packed runtime timed in alternating rounds at batch 1 and 64 with 2 threads (back-to-back calls
after one call per round timed apart; "cold b1" is the ratio of those first calls, each made right after
the other engine had evicted its weights from the caches). Prints the table,
the per-op profiles at batch 1 and 64, and one line per network and sparsity:

    speedup_<network>_<sparsity percent>: X             (against PyTorch, batch 1)
    speedup_vs_ort_<network>_<sparsity percent>: X      (against ONNX Runtime, batch 1)
    speedup_vs_ort_b64_<network>_<sparsity percent>: X  (against ONNX Runtime, batch 64)

    python bench/sparse_runtime.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
GENOTYPE = ROOT / "bench" / "genotypes" / "dass_cifar10.json"

sys.path.insert(0, str(ROOT / "src"))
from dass.data import load_dataset  # noqa: E402
from dass.deploy.export import synthetic_model  # noqa: E402
from dass.deploy.speed import compare_speed  # noqa: E402
from dass.runtime.load import warn_if_busy  # noqa: E402
from dass.space import Genotype  # noqa: E402


def real_images(count: int = 256) -> torch.Tensor:
    x = torch.from_numpy(load_dataset(str(DATA)).x_test[:count]).float().permute(0, 3, 1, 2) / 255.0
    return ((x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small networks and few rounds: a smoke run")
    ap.add_argument("--sparsities", default="0.9,0.95,0.99")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    warn_if_busy()
    images = real_images()
    genotype = Genotype.load(GENOTYPE)
    networks = {
        "resnet18": dict(name="resnet18", width=0.25 if args.quick else 1.0),
        "dass": dict(name="genotype", genotype=genotype, init_channels=8 if args.quick else 36,
                     layers=5 if args.quick else 20),
    }
    rounds = 2 if args.quick else args.rounds
    print(f"genotype: {GENOTYPE.relative_to(ROOT)}; threads: 2; torch {torch.__version__}\n")
    lines, speedups, profiles = [], {}, []
    start = time.time()
    for net, spec in networks.items():
        spec = dict(spec)
        name = spec.pop("name")
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            model = synthetic_model(name, sparsity, (3, 32, 32), calibration=images, **spec)
            report = compare_speed(model, (3, 32, 32), batches=(1, 64), threads=2, rounds=rounds, inputs=images)
            b1, b64 = report.results
            pct = round(sparsity * 100)
            diff = max(b1.max_abs_diff, b64.max_abs_diff, b1.ort_max_abs_diff or 0, b64.ort_max_abs_diff or 0)
            lines.append(f"| {net} | {pct}% | {report.nonzero_macs / 1e6:.1f} | {b1.dense_ms:.2f} | {b1.ort_ms:.2f} | "
                         f"{b1.packed_ms:.2f} | {b1.speedup:.2f}x | {b1.speedup_vs_ort:.2f}x | {b64.dense_ms:.1f} | "
                         f"{b64.ort_ms:.1f} | {b64.packed_ms:.1f} | {b64.speedup:.2f}x | {b64.speedup_vs_ort:.2f}x | "
                         f"{diff:.1e} |")
            speedups[f"speedup_{net}_{pct}"] = b1.speedup
            speedups[f"speedup_vs_ort_{net}_{pct}"] = b1.speedup_vs_ort
            speedups[f"speedup_vs_ort_b64_{net}_{pct}"] = b64.speedup_vs_ort
            profiles.append((f"{net} at {pct}%", report.profile_table()))
            profiles.append((f"{net} at {pct}%", report.profile_table(large=True)))
            print(lines[-1], flush=True)
    print("\n| network | sparsity | nonzero MMACs | PyTorch b1 (ms) | ORT b1 (ms) | packed b1 (ms) | vs PyTorch b1 | "
          "vs ORT b1 | PyTorch b64 (ms) | ORT b64 (ms) | packed b64 (ms) | vs PyTorch b64 | vs ORT b64 | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    for title, table in profiles:
        print(f"\nwhere the time goes, {title}:\n{table}")
    print(f"\nwall time: {(time.time() - start) / 60:.1f} min\n")
    for key, value in speedups.items():
        print(f"{key}: {value:.2f}")


if __name__ == "__main__":
    main()
