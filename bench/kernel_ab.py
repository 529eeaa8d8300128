"""A/B of packed-runtime kernel builds in one process: the same programs run by builds of
``sparse_runtime.cpp`` with different preprocessor flags, in alternating rounds.

Kernel changes move whole-network times by a few percent, less than this machine drifts between runs, so
they are judged here: each variant is compiled from the current source with its ``-D`` flags, every
variant runs the same compiled programs (ResNet-18 and the DASS network of ``bench/sparse_runtime.py``,
pruned by magnitude) in turns, and the script prints each variant's median time and its ratio to the first
variant, plus the largest output difference between variants (it must stay below 1e-4).

    python bench/kernel_ab.py --variants "head=--source=git:HEAD;new=" [--batches 1,64] [--rounds 9]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from dass.deploy.compiler import CompileOptions, compile_model  # noqa: E402
from dass.deploy.export import synthetic_model  # noqa: E402
from dass.deploy.packed import PackedModel  # noqa: E402
from dass.native import FLAGS, RUNTIME  # noqa: E402
from dass.runtime.load import warn_if_busy  # noqa: E402
from dass.space import Genotype  # noqa: E402
from sparse_runtime import GENOTYPE, real_images  # noqa: E402


def build(flags: list[str], out: Path) -> ctypes.CDLL:
    """Compile the runtime with extra flags; ``--source=FILE`` (or ``--source=git:REV``) builds another version."""
    source = str(RUNTIME.source)
    for flag in [f for f in flags if f.startswith("--source=")]:
        flags.remove(flag)
        source = flag.split("=", 1)[1]
        if source.startswith("git:"):
            rel = RUNTIME.source.relative_to(ROOT)
            text = subprocess.run(["git", "-C", str(ROOT), "show", f"{source[4:]}:{rel}"], check=True,
                                  capture_output=True, text=True).stdout
            source = str(out.with_suffix(".cpp"))
            Path(source).write_text(text)
    cmd = ["g++", *FLAGS, *flags, f"-I{sysconfig.get_paths()['include']}", source, "-o", str(out)]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(str(out))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.dass_run.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, ctypes.c_int, ptr]
    lib.dass_run.restype = ctypes.c_int
    return lib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="head=--source=git:HEAD;new=",
                    help="name=flags;name=flags (compiler flags, --source=FILE|git:REV, opt:FIELD=INT for CompileOptions; "
                         "the first variant is the reference)")
    ap.add_argument("--networks", default="resnet18,dass")
    ap.add_argument("--sparsities", default="0.9,0.99")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warn_if_busy()
    tmp = Path(tempfile.mkdtemp(prefix="dass-ab-"))
    variants, options = {}, {}
    for i, spec in enumerate(args.variants.split(";")):
        name, _, flags = spec.partition("=")
        opts = [f for f in flags.split() if f.startswith("opt:")]   # opt:FIELD=VALUE: a CompileOptions field
        options[name] = CompileOptions(**{k: type(getattr(CompileOptions(), k))(int(v)) for k, v in
                                          (o[4:].split("=") for o in opts)})
        variants[name] = build([f for f in flags.split() if f not in opts], tmp / f"v{i}.so")
    images = real_images()
    genotype = Genotype.load(GENOTYPE)
    specs = {"resnet18": dict(name="resnet18"),
             "dass": dict(name="genotype", genotype=genotype, init_channels=36, layers=20)}
    names = list(variants)
    print(f"variants: {args.variants}; threads {args.threads}; rounds {args.rounds}\n")
    print("| network | sparsity | batch | " + " | ".join(f"{n} (ms)" for n in names) + " | "
          + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " | max diff |")
    print("|---" * (3 + 2 * len(names)) + "|---|")
    for net in args.networks.split(","):
        spec = dict(specs[net])
        kind = spec.pop("name")
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            model = synthetic_model(kind, sparsity, (3, 32, 32), calibration=images, **spec)
            engines = {}
            for name, lib in variants.items():
                engines[name] = PackedModel(compile_model(model, (3, 32, 32), options[name]), threads=args.threads)
                engines[name]._lib = lib
            for batch in [int(b) for b in args.batches.split(",")]:
                x = images[:batch].numpy() if batch <= len(images) else np.resize(images.numpy(), (batch, 3, 32, 32))
                outs = {n: e(x) for n, e in engines.items()}
                diff = max(float(np.abs(outs[n] - outs[names[0]]).max()) for n in names)
                inner = max(1, int(0.2 / max(1e-4, _once(engines[names[0]], x))))
                times: dict[str, list[float]] = {n: [] for n in names}
                for r in range(args.rounds):
                    order = names if r % 2 == 0 else names[::-1]
                    for n in order:
                        engines[n](x)
                        t0 = time.perf_counter()
                        for _ in range(inner):
                            engines[n](x)
                        times[n].append((time.perf_counter() - t0) / inner * 1e3)
                med = {n: statistics.median(v) for n, v in times.items()}
                print(f"| {net} | {round(sparsity * 100)}% | {batch} | "
                      + " | ".join(f"{med[n]:.2f}" for n in names) + " | "
                      + " | ".join(f"{med[names[0]] / med[n]:.3f}x" for n in names[1:]) + f" | {diff:.1e} |",
                      flush=True)


def _once(engine: PackedModel, x: np.ndarray) -> float:
    t0 = time.perf_counter()
    engine(x)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
