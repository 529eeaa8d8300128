"""Why the packed runtime is a C++/OpenMP whole-program executor and not numba: the fixed cost per op.

A DASS network at 99% sparsity runs ~500 ops of a few thousand multiply-adds each at batch 1, so the
cost of starting and joining the parallel work of one op decides the speed. This script measures it
side by side for 500 trivial ops (ReLU over 64 floats) with 2 threads:

* dass runtime: one OpenMP parallel region for the whole program, one barrier per op;
* numba (if installed: pip install numba): a parallel (prange) loop per op, called from a compiled loop;
* PyTorch: one F.relu call per op (what a dense module-by-module forward pays).

    python bench/backend_overhead.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from dass.deploy.program import N_FIELDS, Field, Op, Program  # noqa: E402
from dass.deploy.packed import PackedModel  # noqa: E402

OPS_COUNT, SIZE, THREADS, REPEATS = 500, 64, 2, 200


def dass_program() -> PackedModel:
    rows = np.zeros((OPS_COUNT, N_FIELDS), np.int64)
    for k in range(OPS_COUNT):
        src, dst = (0, SIZE) if k % 2 == 0 else (SIZE, 0)
        r = rows[k]
        r[Field.OP], r[Field.ACT] = Op.ACT, 1
        r[Field.X], r[Field.OUT], r[Field.Y] = src, dst, -1
        r[Field.C], r[Field.H], r[Field.W] = SIZE, 1, 1
        r[Field.X_IMG] = r[Field.OUT_IMG] = SIZE
    out = 0 if OPS_COUNT % 2 == 0 else SIZE
    program = Program(rows, np.zeros(1, np.float32), np.zeros(1, np.int32), 2 * SIZE, 0, 0, (SIZE, 1, 1), out,
                      (SIZE, 1, 1), ["act"] * OPS_COUNT, [0] * OPS_COUNT, (SIZE,))
    return PackedModel(program, threads=THREADS)


def per_op_us(fn) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(REPEATS):
        fn()
    return (time.perf_counter() - t0) / REPEATS / OPS_COUNT * 1e6


def main() -> None:
    x = np.random.randn(1, SIZE, 1, 1).astype(np.float32)
    results = {"dass runtime (one parallel region, barrier per op)": per_op_us(lambda: dass_program_run(x))}
    try:
        import numba
        from numba import njit, prange

        numba.set_num_threads(THREADS)

        @njit(parallel=True, cache=False)
        def relu_op(src, dst):
            for c in prange(src.shape[0]):
                dst[c] = max(src[c], 0.0)

        @njit
        def program(a, b, count):
            for k in range(count):
                if k % 2 == 0:
                    relu_op(a, b)
                else:
                    relu_op(b, a)

        a, b = x.ravel().copy(), np.zeros(SIZE, np.float32)
        results[f"numba {numba.__version__} (prange per op)"] = per_op_us(lambda: program(a, b, OPS_COUNT))
    except ImportError:
        print("numba not installed: its row is skipped (pip install numba)")
    torch.set_num_threads(THREADS)
    t = torch.from_numpy(x)
    with torch.inference_mode():
        results["PyTorch (F.relu per op)"] = per_op_us(lambda: [torch.relu(t) for _ in range(OPS_COUNT)])
    base = results["dass runtime (one parallel region, barrier per op)"]
    print(f"{OPS_COUNT} ops of {SIZE} floats, {THREADS} threads, mean of {REPEATS} runs\n")
    print("| backend | us per op | vs dass |\n|---|---|---|")
    for name, us in results.items():
        print(f"| {name} | {us:.2f} | {us / base:.1f}x |")


_PACKED: PackedModel | None = None


def dass_program_run(x: np.ndarray) -> None:
    global _PACKED
    if _PACKED is None:
        _PACKED = dass_program()
    _PACKED(x)


if __name__ == "__main__":
    main()
