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
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from dass.deploy.compiler import CompileOptions, compile_model  # noqa: E402
from dass.deploy.export import synthetic_model  # noqa: E402
from dass.deploy.packed import PackedModel  # noqa: E402
from dass.deploy.native import bind  # noqa: E402
from dass.deploy.speed import median_times  # noqa: E402
from dass.native import RUNTIME, compile_source  # noqa: E402
from dass.runtime.load import warn_if_busy  # noqa: E402
from dass.space import Genotype  # noqa: E402
from sparse_runtime import GENOTYPE, real_images  # noqa: E402


def build(flags: list[str], out: Path) -> ctypes.CDLL:
    """Compile the runtime with extra flags; ``--source=FILE`` (or ``--source=git:REV``) builds another version."""
    source = RUNTIME.source
    for flag in [f for f in flags if f.startswith("--source=")]:
        flags.remove(flag)
        source = Path(flag.split("=", 1)[1])
        if str(source).startswith("git:"):
            rel = RUNTIME.source.relative_to(ROOT)
            text = subprocess.run(["git", "-C", str(ROOT), "show", f"{str(source)[4:]}:{rel}"], check=True,
                                  capture_output=True, text=True).stdout
            source = out.with_suffix(".cpp")
            source.write_text(text)
    return bind(ctypes.CDLL(str(compile_source(source, out, tuple(flags)))))


def parse_variant(spec: str) -> tuple[str, list[str], CompileOptions]:
    """``name=flags``: compiler flags, ``--source=...``, and ``opt:FIELD=INT`` fields of CompileOptions."""
    name, _, text = spec.partition("=")
    flags = text.split()
    fields = dict(f[4:].split("=") for f in flags if f.startswith("opt:"))
    defaults = CompileOptions()
    options = CompileOptions(**{k: type(getattr(defaults, k))(int(v)) for k, v in fields.items()})
    return name, [f for f in flags if not f.startswith("opt:")], options


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
        name, flags, options[name] = parse_variant(spec)
        variants[name] = build(flags, tmp / f"v{i}.so")
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
                start = time.perf_counter()
                engines[names[0]](x)
                inner = max(1, int(0.2 / max(1e-4, time.perf_counter() - start)))
                warm, _ = median_times([partial(engines[n], x) for n in names], args.rounds, inner, alternate=True)
                med = {n: 1e3 * t for n, t in zip(names, warm)}
                print(f"| {net} | {round(sparsity * 100)}% | {batch} | "
                      + " | ".join(f"{med[n]:.2f}" for n in names) + " | "
                      + " | ".join(f"{med[names[0]] / med[n]:.3f}x" for n in names[1:]) + f" | {diff:.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
