"""`dass export` and `dass bench`: from a trained run (or a synthetically pruned model) to a packed model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DassError
from ..models import build_model
from ..runtime import atomic_write_text
from ..runtime.files import check_writable, file_digest
from ..sparse import init_scores, set_sparsity
from ..trained import MODEL_FILE, load_trained
from .compiler import compile_model
from .defaults import DEFAULT_THREADS
from .packed import PackedModel
from .speed import SpeedReport, calibrate_batchnorm, compare_speed

PACKED_NAME = "model_packed.npz"
TOLERANCE = 1e-4


CALIBRATION_IMAGES = 256   # noise images that set batch-norm statistics of synthetic models
CHECK_IMAGES = 64   # test images the packed model is checked on against PyTorch


def export_run(run_dir: str | Path, out: str | Path | None = None, onnx: bool = False,
               threads: int = DEFAULT_THREADS) -> dict:
    """Pack a finished training run; check the packed (and ONNX) model against PyTorch on test images.

    ``out``: the packed file, or a folder to write ``model_packed.npz`` into (default: the run directory,
    with ``export.json`` recording the digest of the model it was made from)."""
    run_dir = Path(run_dir)
    if threads < 1:
        raise DassError(f"--threads must be at least 1, got {threads}")
    target = Path(out) if out else run_dir / PACKED_NAME
    if target.is_dir():
        target = target / PACKED_NAME
    check_writable(target.parent, "choose another --out")
    trained = load_trained(run_dir, "cpu")   # the packed runtime is a CPU engine: so is its reference
    model, shape = trained.model, trained.input_shape
    packed = PackedModel(compile_model(model, shape), threads=threads)
    images = trained.test_images(CHECK_IMAGES)
    with torch.no_grad():
        reference = model(images).numpy()
    diff = float(np.abs(packed(images.numpy()) - reference).max())
    if diff > 10 * TOLERANCE:
        raise DassError(f"the packed model disagrees with PyTorch by {diff:.2e} (max abs) on test images; "
                        f"this is a bug in dass, please report it with the run's config.yaml")
    path = packed.save(target)
    result = {"packed": str(path), "bytes": path.stat().st_size, "instructions": len(packed.program.instructions),
              "nonzero_macs": packed.nonzero_macs, "max_abs_diff": diff,
              "model_sha256": file_digest(run_dir / MODEL_FILE), "packed_sha256": file_digest(path)}
    if onnx:
        from .onnx_export import check_onnx, export_onnx

        onnx_path = export_onnx(model, shape, path.with_name("model.onnx"))
        result.update(onnx=str(onnx_path), onnx_max_abs_diff=check_onnx(model, onnx_path, shape, batch=8))
    if out is None:
        atomic_write_text(run_dir / "export.json", json.dumps(result, indent=2) + "\n")
    return result


def synthetic_model(name: str, sparsity: float, input_shape: tuple[int, int, int], seed: int = 0,
                    calibration: torch.Tensor | None = None, **model_kwargs) -> nn.Module:
    """A model pruned to ``sparsity`` by per-layer weight magnitude, batch norm calibrated on
    ``calibration`` images (default: Gaussian noise).

    For speed measurements only (its accuracy means nothing): its nonzero pattern and per-layer
    densities are those of a HYDRA/magnitude-pruned network at that sparsity.
    """
    torch.manual_seed(seed)
    model = build_model(name, in_channels=input_shape[0], **model_kwargs)
    init_scores(model)
    set_sparsity(model, sparsity)
    calibrate_batchnorm(model, calibration if calibration is not None else torch.randn(CALIBRATION_IMAGES, *input_shape))
    return model.eval()


def exported_packed_file(run_dir: Path) -> Path | None:
    """The run's ``model_packed.npz`` if it was exported from the run's current model; None if there is none.

    A packed file that ``export.json`` does not tie to this ``model_sparse.pt`` (retrained, replaced, copied in)
    is refused rather than silently benchmarked against another network."""
    packed_file = run_dir / PACKED_NAME
    if not packed_file.is_file():
        return None
    try:
        record = json.loads((run_dir / "export.json").read_text())
        fresh = (record["model_sha256"] == file_digest(run_dir / MODEL_FILE)
                 and record["packed_sha256"] == file_digest(packed_file))
    except (OSError, ValueError, KeyError, TypeError):
        fresh = False
    if not fresh:
        raise DassError(f"{packed_file} was not exported from this run's {MODEL_FILE} (or export.json is missing); "
                        f"run `dass export {run_dir}` again")
    return packed_file


def bench_run(run_dir: str | Path, batches: tuple[int, ...], threads: int, rounds: int, ort: bool = True) -> SpeedReport:
    run_dir = Path(run_dir)
    check_writable(run_dir, "the bench writes bench.json into the run directory")
    trained = load_trained(run_dir, "cpu")
    packed_file = exported_packed_file(run_dir)
    packed = PackedModel.load(packed_file, threads) if packed_file is not None else None
    report = compare_speed(trained.model, trained.input_shape, batches, threads, rounds,
                           inputs=trained.test_images(CHECK_IMAGES), packed=packed, ort=ort)
    atomic_write_text(run_dir / "bench.json", json.dumps(report_dict(report), indent=2) + "\n")
    return report


def report_dict(report: SpeedReport) -> dict:
    return {"threads": report.threads, "nonzero_macs": report.nonzero_macs,
            "results": [dict(batch=r.batch, dense_ms=r.dense_ms, packed_ms=r.packed_ms, speedup=r.speedup,
                             max_abs_diff=r.max_abs_diff, dense_cold_ms=r.dense_cold_ms, packed_cold_ms=r.packed_cold_ms,
                             cold_speedup=r.cold_speedup, ort_ms=r.ort_ms, ort_cold_ms=r.ort_cold_ms,
                             speedup_vs_ort=r.speedup_vs_ort, ort_max_abs_diff=r.ort_max_abs_diff)
                        for r in report.results],
            "profile_batch1": report.profile, "profile_large_batch": report.large_batch,
            "profile_large": report.large_profile}
