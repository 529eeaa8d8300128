"""`dass eval` and `dass compare`: accuracy, sizes, multiply-adds and latency of finished training runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import EVAL_BATCH, TensorBatches
from .deploy.compiler import compile_model
from .deploy.packed import PackedModel
from .deploy.defaults import DEFAULT_THREADS
from .deploy.speed import packed_latency
from .errors import DassError
from .loop import evaluate as evaluate_model
from .metrics import count, measure_latency
from .runtime import atomic_write_text
from .runtime.files import check_writable, file_digest
from .trained import MODEL_FILE, load_trained


def evaluate_run(run_dir: str | Path, latency: bool = True, repeats: int = 20, device: str | None = None) -> dict:
    """Evaluate a finished run and write ``eval.json`` into it; the library twin of ``dass eval``.

    Accuracy is measured on ``device``; counts and latencies on the CPU (what the edge deployment runs)."""
    if repeats < 1:
        raise DassError(f"--repeats must be at least 1, got {repeats}")
    check_writable(Path(run_dir), "dass eval writes eval.json into the run directory")
    trained = load_trained(Path(run_dir), device)
    model, config = trained.model, trained.config
    test = TensorBatches(trained.test_images(), trained.test_labels, EVAL_BATCH, 0, 0, shuffle=False)
    _, acc = evaluate_model(model, test.batches(0), next(model.parameters()).device)
    model = model.cpu()
    counts = count(model, trained.input_shape)
    result = {
        "run": str(run_dir),
        "model": config.model.name if not config.model.genotype else f"genotype:{Path(config.model.genotype).name}",
        "dataset": trained.dataset.name,
        "sparsity": config.train.sparsity,
        "pruner": config.train.pruner,
        "top1": acc,
        **counts.to_dict(),
        "checkpoint_bytes": trained.checkpoint_bytes,
        "model_sha256": file_digest(Path(run_dir) / MODEL_FILE),
        "dense_fp32_bytes": 4 * counts.params,
    }
    if latency:
        result["latency_b1_ms"] = 1e3 * measure_latency(model, trained.input_shape, 1, repeats=repeats)
        result["latency_b64_ms"] = 1e3 * measure_latency(model, trained.input_shape, 64, warmup=2,
                                                         repeats=max(3, repeats // 5))
        result.update(_packed_latencies(model, trained.input_shape, repeats))
    atomic_write_text(Path(run_dir) / "eval.json", json.dumps(result, indent=2) + "\n")
    return result


def _packed_latencies(model: torch.nn.Module, input_shape: tuple[int, ...], repeats: int) -> dict:
    """Latency of the same network on the packed sparse runtime (what `dass export` produces)."""
    try:
        packed = PackedModel(compile_model(model, input_shape), threads=DEFAULT_THREADS)
    except DassError as exc:   # an op the runtime does not cover: report PyTorch latency only
        return {"packed_error": str(exc)}
    return {"packed_latency_b1_ms": 1e3 * packed_latency(packed, 1, repeats=repeats),
            "packed_latency_b64_ms": 1e3 * packed_latency(packed, 64, warmup=2, repeats=max(3, repeats // 5))}


def compare_table(results: list[dict]) -> str:
    """A Markdown table over evaluated runs."""
    head = ("| run | model | sparsity | top-1 (%) | nonzero params | params | sparse MACs | dense MACs | "
            "checkpoint (KB) | latency b1 (ms) | latency b64 (ms) | packed b1 (ms) | packed b64 (ms) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lat1 = f"{r['latency_b1_ms']:.2f}" if "latency_b1_ms" in r else "-"
        lat64 = f"{r['latency_b64_ms']:.1f}" if "latency_b64_ms" in r else "-"
        packed1 = f"{r['packed_latency_b1_ms']:.2f}" if "packed_latency_b1_ms" in r else "-"
        packed64 = f"{r['packed_latency_b64_ms']:.1f}" if "packed_latency_b64_ms" in r else "-"
        lines.append(f"| {Path(r['run']).name} | {r['model']} | {r['sparsity']:.2f} | {100 * r['top1']:.2f} | "
                     f"{r['nonzero_params']:,} | {r['params']:,} | {r['sparse_macs']:,} | {r['macs']:,} | "
                     f"{r['checkpoint_bytes'] / 1024:.1f} | {lat1} | {lat64} | {packed1} | {packed64} |")
    return "\n".join(lines)


def _fresh_eval(run_dir: Path) -> dict | None:
    """The run's eval.json if it was measured on the run's current model (else it is measured again)."""
    try:
        result = json.loads((run_dir / "eval.json").read_text())
        return result if result["model_sha256"] == file_digest(run_dir / MODEL_FILE) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compare_runs(run_dirs: list[str | Path]) -> str:
    results = [_fresh_eval(Path(d)) or evaluate_run(d) for d in run_dirs]
    return compare_table(results)
