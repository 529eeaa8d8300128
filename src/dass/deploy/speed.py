"""Dense PyTorch against the packed runtime, measured side by side in one process.

The dense baseline is the pruned model as PyTorch would deploy it: masks materialized, batch norm folded
(``fold_batchnorm``), eval mode, inference mode, the same thread count. The two are timed in alternating
rounds so that a noisy machine slows both alike; each figure is the median over rounds.

Within a round each engine first makes one call that is timed apart ("cold"): it runs right after the other
engine, whose traffic has evicted this one's weights from the caches (the dense ResNet-18 streams 45 MB). The
main figures are the calls after it, back to back, as a deployed model serving requests runs; the cold ones
are reported beside them so that neither is hidden.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .compiler import compile_model
from .defaults import DEFAULT_THREADS
from .fold import fold_batchnorm
from .packed import PackedModel


@dataclass
class SpeedResult:
    batch: int
    dense_ms: float
    packed_ms: float
    max_abs_diff: float
    dense_cold_ms: float = 0.0    # the first call of a round, right after the other engine ran
    packed_cold_ms: float = 0.0
    ort_ms: float | None = None   # ONNX Runtime (dense, same folded model; the faster of its two sessions, see
                                  # OrtEngine), when onnxruntime is installed
    ort_cold_ms: float | None = None
    ort_max_abs_diff: float | None = None

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.packed_ms

    @property
    def speedup_vs_ort(self) -> float | None:
        return self.ort_ms / self.packed_ms if self.ort_ms else None

    @property
    def cold_speedup(self) -> float:
        return self.dense_cold_ms / self.packed_cold_ms if self.packed_cold_ms else 0.0


@dataclass
class SpeedReport:
    results: list[SpeedResult]
    profile: dict[str, dict[str, float]] = field(default_factory=dict)   # at batch 1
    nonzero_macs: int = 0
    threads: int = DEFAULT_THREADS
    large_profile: dict[str, dict[str, float]] = field(default_factory=dict)   # at the largest batch (> 1)
    large_batch: int = 0

    def table(self) -> str:
        ort = any(r.ort_ms for r in self.results)
        lines = ["| batch | dense PyTorch (ms) | " + ("ONNX Runtime (ms) | " if ort else "") + "packed (ms) | speed-up "
                 + ("| vs ONNX Runtime " if ort else "") + "| cold: dense / packed (ms) | cold speed-up | max abs diff |",
                 "|---|---|---|---|" + ("---|---|" if ort else "") + "---|---|---|"]
        for r in self.results:
            ort_cells = f"{r.ort_ms:.3f} | " if ort and r.ort_ms else ("- | " if ort else "")
            vs = (f" {r.speedup_vs_ort:.2f}x |" if r.speedup_vs_ort else " - |") if ort else ""
            diff = max(r.max_abs_diff, r.ort_max_abs_diff or 0.0)
            lines.append(f"| {r.batch} | {r.dense_ms:.3f} | {ort_cells}{r.packed_ms:.3f} | {r.speedup:.2f}x |{vs} "
                         f"{r.dense_cold_ms:.3f} / {r.packed_cold_ms:.3f} | {r.cold_speedup:.2f}x | {diff:.1e} |")
        return "\n".join(lines)

    def profile_table(self, large: bool = False) -> str:
        """Time per op type at batch 1, or at the largest batch measured (``large``)."""
        profile = self.large_profile if large else self.profile
        total = sum(v["seconds"] for v in profile.values()) or 1.0
        lines = [f"| op (batch {self.large_batch if large else 1}) | count | ms | share | nonzero MACs | GMAC/s |",
                 "|---|---|---|---|---|---|"]
        for name, v in sorted(profile.items(), key=lambda kv: -kv[1]["seconds"]):
            rate = v["macs"] / v["seconds"] / 1e9 if v["macs"] and v["seconds"] > 0 else 0.0
            lines.append(f"| {name} | {v['count']} | {1e3 * v['seconds']:.3f} | {100 * v['seconds'] / total:.1f}% | "
                         f"{v['macs']:,} | {rate:.2f} |" if v["macs"] else
                         f"| {name} | {v['count']} | {1e3 * v['seconds']:.3f} | {100 * v['seconds'] / total:.1f}% | - | - |")
        return "\n".join(lines)


def median_times(fns: list, rounds: int, inner: int, alternate: bool = False) -> tuple[list[float], list[float]]:
    """Per function: median seconds per call over rounds of ``inner`` back-to-back calls, and the median of
    each round's first (cold) call, timed apart. ``alternate``: every other round runs the functions in reverse
    order, so that none always runs right after the same one."""
    warm, cold = [[] for _ in fns], [[] for _ in fns]
    for r in range(rounds):
        order = list(range(len(fns)))
        for i in (order[::-1] if alternate and r % 2 else order):
            fn = fns[i]
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            for _ in range(inner):
                fn()
            cold[i].append(t1 - t0)
            warm[i].append((time.perf_counter() - t1) / inner)
    return [statistics.median(t) for t in warm], [statistics.median(t) for t in cold]


class OrtEngine:
    """ONNX Runtime on the same masked, BN-folded model (dense kernels): what a user would deploy instead.

    Two sessions of the same model: ONNX Runtime's default one, whose pool threads spin after each call, and a
    ``quiet`` one that does not spin. Timed in turns with other engines, the spinning session makes the next
    engine's two-thread calls several times slower for as long as ~200 ms (ResNet-18 at batch 1 in the packed
    runtime: 4.3 instead of 0.87 ms, every call of a run of eight), so :func:`compare_speed` alternates the quiet
    session and times the default one apart, then keeps the faster of the two."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], threads: int):
        import onnxruntime as ort

        from .onnx_export import export_onnx

        def session(path: Path, spinning: bool):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if not spinning:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, input_shape, Path(tmp) / "model.onnx")
            self.session, self.quiet_session = session(path, True), session(path, False)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def quiet(self, x: np.ndarray) -> np.ndarray:
        """The same call through the session whose threads do not spin afterwards."""
        return self.quiet_session.run(None, {self.input_name: x})[0]


def ort_engine(model: nn.Module, input_shape: tuple[int, int, int], threads: int) -> OrtEngine | None:
    """An :class:`OrtEngine`, or None when onnx/onnxruntime are not installed (the ``onnx`` extra)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    return OrtEngine(model, input_shape, threads)


def compare_speed(model: nn.Module, input_shape: tuple[int, int, int], batches: tuple[int, ...] = (1, 64),
                  threads: int = DEFAULT_THREADS, rounds: int = 7, inputs: torch.Tensor | None = None,
                  packed: PackedModel | None = None, min_seconds: float = 0.05, ort: bool = True) -> SpeedReport:
    """Dense PyTorch, ONNX Runtime (``ort`` and installed) and the packed runtime on the same model, timed in
    alternating rounds at each batch size; checks that they agree."""
    model = model.eval()
    dense = fold_batchnorm(model)   # outside inference mode: the copies stay ordinary tensors
    packed = packed or PackedModel(compile_model(model, input_shape), threads=threads)
    packed.threads = threads
    onnx_runtime = ort_engine(model, input_shape, threads) if ort else None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    was_flushing = _flushing_denormals()
    torch.set_flush_denormal(True)  # the packed runtime flushes denormals too: same footing
    try:
        with torch.inference_mode():
            results, profile, large = _measure(dense, packed, input_shape, batches, rounds, inputs, min_seconds,
                                               onnx_runtime)
    finally:
        torch.set_num_threads(previous)
        torch.set_flush_denormal(was_flushing)   # the caller's process keeps its own floating-point mode
    return SpeedReport(results, profile, packed.nonzero_macs, threads, large, max(batches) if large else 0)


def _flushing_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero now (a denormal halved becomes 0.0 if so)."""
    tiny = sys.float_info.min
    return tiny / 2.0 == 0.0


def _measure(dense: nn.Module, packed: PackedModel, input_shape: tuple[int, int, int], batches: tuple[int, ...],
             rounds: int, inputs: torch.Tensor | None, min_seconds: float,
             ort: OrtEngine | None = None) -> tuple[list[SpeedResult], dict, dict]:
    results = []
    largest = None   # (the largest batch's input: its profile too)
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        if inputs is not None:
            reps = -(-batch // len(inputs))
            x = inputs.repeat(reps, 1, 1, 1)[:batch].contiguous()
        else:
            x = torch.randn(batch, *input_shape, generator=gen)
        xn = x.numpy()
        if batch == max(batches):
            largest = xn
        reference = dense(x).numpy()
        diff = float(np.abs(packed(xn) - reference).max())
        # (ONNX Runtime's quiet session in turns with the others; its default, spinning one alone after them)
        engines = [lambda: dense(x), lambda: packed(xn)] + ([lambda: ort.quiet(xn)] if ort is not None else [])
        for _ in range(2):      # warm-up
            for engine in engines:
                engine()
        t0 = time.perf_counter()
        dense(x)
        inner = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
        warm, cold = median_times(engines, rounds, inner)
        result = SpeedResult(batch, 1e3 * warm[0], 1e3 * warm[1], diff, 1e3 * cold[0], 1e3 * cold[1])
        if ort is not None:
            ort(xn)
            (spin_warm,), (spin_cold,) = median_times([lambda: ort(xn)], rounds, inner)
            result.ort_ms, result.ort_cold_ms = 1e3 * min(warm[2], spin_warm), 1e3 * min(cold[2], spin_cold)
            result.ort_max_abs_diff = float(np.abs(ort(xn) - reference).max())
        results.append(result)
    x1 = (inputs[:1] if inputs is not None else torch.randn(1, *input_shape, generator=gen)).numpy()
    profile = packed.profile(x1, repeats=20)
    large = packed.profile(largest, repeats=5) if len(largest) > 1 else {}
    return results, profile, large


def packed_latency(packed: PackedModel, batch: int, warmup: int = 3, repeats: int = 20) -> float:
    """Median seconds per call of the packed model on a random batch."""
    x = np.random.default_rng(0).standard_normal((batch, *packed.input_shape)).astype(np.float32)
    for _ in range(warmup):
        packed(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        packed(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch: int = 128) -> None:
    """Re-estimate batch-norm statistics on ``images`` (for synthetically pruned models in benchmarks)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None   # cumulative average over the calibration batches
    model.train()
    for i in range(0, len(images), batch):
        model(images[i:i + batch])
    model.eval()
