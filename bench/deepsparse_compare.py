"""The packed runtime, ONNX Runtime and DeepSparse on the same pruned models, in alternating rounds.

DeepSparse (Neural Magic's sparse CPU engine, end of life, pinned to NumPy < 2 and an old onnx) is not a
dependency: it runs in a separate virtual environment, in a child process that this script drives over a pipe
so that its rounds alternate with the other engines' in one run. Set that environment up once:

    python3 -m venv /tmp/ds && /tmp/ds/bin/pip install "deepsparse==1.8.0" "onnx<1.15"
    python bench/deepsparse_compare.py --python /tmp/ds/bin/python [--networks resnet18,dass] [--sparsities 0.9]

Each model is the one `bench/sparse_runtime.py` times (magnitude-pruned per layer, BN calibrated on CIFAR-10
images and folded), exported to ONNX once; the child lowers the file's IR version to what its bundled ONNX
Runtime reads and compiles it for each batch size with as many cores as the other engines get threads.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from sparse_runtime import GENOTYPE, real_images  # noqa: E402

from dass.deploy.compiler import compile_model  # noqa: E402
from dass.deploy.export import synthetic_model  # noqa: E402
from dass.deploy.onnx_export import export_onnx  # noqa: E402
from dass.deploy.packed import PackedModel  # noqa: E402
from dass.deploy.speed import OrtEngine  # noqa: E402
from dass.runtime.load import warn_if_busy  # noqa: E402
from dass.space import Genotype  # noqa: E402

# The child: reads "model batch cores" once, then a count per line; answers with the mean seconds of that many
# calls (and the outputs' first row once, for the agreement check).
CHILD = textwrap.dedent("""
    import sys, time, numpy as np, onnx
    from deepsparse import compile_model
    path, data, batch, cores = sys.stdin.readline().split()
    model = onnx.load(path)
    model.ir_version = min(model.ir_version, 8)
    onnx.save(model, path + ".ir8.onnx")
    x = [np.ascontiguousarray(np.load(data)[: int(batch)])]
    engine = compile_model(path + ".ir8.onnx", batch_size=int(batch), num_cores=int(cores))
    out = engine(x)[0]
    print(" ".join(repr(float(v)) for v in out.reshape(len(out), -1)[0]), flush=True)
    for line in sys.stdin:
        n = int(line)
        t0 = time.perf_counter()
        for _ in range(n):
            engine(x)
        print((time.perf_counter() - t0) / n, flush=True)
""")


class DeepSparse:
    """A DeepSparse engine in a child process of another Python."""

    def __init__(self, python: str, onnx_path: Path, data: Path, batch: int, cores: int):
        self.proc = subprocess.Popen([python, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(f"{onnx_path} {data} {batch} {cores}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"DeepSparse did not start with {python} (see its error above)")
        self.first_row = np.array([float(v) for v in line.split()], np.float32)

    def seconds(self, calls: int) -> float:
        self.proc.stdin.write(f"{calls}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def mean_seconds(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True, help="the Python of a virtual environment with deepsparse")
    ap.add_argument("--networks", default="resnet18,dass")
    ap.add_argument("--sparsities", default="0.9,0.99")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    warn_if_busy()
    shape = (3, 32, 32)
    images = real_images(64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.npy"
        np.save(data, images.numpy())
        for name in args.networks.split(","):
            spec = dict(width=1.0) if name == "resnet18" else \
                dict(genotype=Genotype.load(GENOTYPE), init_channels=36, layers=20)
            for sparsity in (float(s) for s in args.sparsities.split(",")):
                model = synthetic_model("resnet18" if name == "resnet18" else "genotype", sparsity, shape,
                                        calibration=images, **spec).eval()
                path = export_onnx(model, shape, Path(tmp) / f"{name}_{sparsity}.onnx")
                packed = PackedModel(compile_model(model, shape), threads=args.threads)
                ort = OrtEngine(model, shape, args.threads)
                for batch in (int(b) for b in args.batches.split(",")):
                    x = images[:batch].numpy()
                    ds = DeepSparse(args.python, path, data, batch, args.threads)
                    diff = float(np.abs(ds.first_row - packed(x)[0]).max())
                    calls = 50 if batch == 1 else 2
                    times: dict[str, list[float]] = {"ort": [], "deepsparse": [], "packed": []}
                    for _ in range(args.rounds):
                        times["ort"].append(mean_seconds(lambda: ort(x), calls))
                        times["deepsparse"].append(ds.seconds(calls))
                        times["packed"].append(mean_seconds(lambda: packed(x), calls))
                    ds.close()
                    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
                    rows.append((name, sparsity, batch, med, diff))
                    print(f"{name} {sparsity:.0%} b{batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()),
                          flush=True)
    print(f"\n{args.threads} threads, medians of {args.rounds} alternating rounds (ms per call)\n")
    print("| network | sparsity | batch | ONNX Runtime | DeepSparse | packed | DeepSparse vs ORT | packed vs ORT "
          "| packed vs DeepSparse | max abs diff (first image) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, sparsity, batch, med, diff in rows:
        o, d, p = med["ort"], med["deepsparse"], med["packed"]
        print(f"| {name} | {sparsity:.0%} | {batch} | {o:.2f} | {d:.2f} | {p:.2f} | {o / d:.2f}x | {o / p:.2f}x "
              f"| {d / p:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
