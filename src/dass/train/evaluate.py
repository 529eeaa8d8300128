"""Evaluation of a finished training run: accuracy, sizes, multiply-adds, latency; and comparison tables."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import Normalization, TensorBatches, load_dataset
from ..errors import DassError
from ..loop import evaluate as evaluate_model
from ..metrics import count, measure_latency
from ..runtime import RunDir, atomic_write_text
from ..runtime.config import build, load_yaml
from ..sparse.serialize import load_sparse_model, unpack_into
from .config import TrainRunConfig
from .pipeline import build_network


def load_trained(run_dir: Path) -> tuple[torch.nn.Module, TrainRunConfig, dict]:
    run = RunDir(Path(run_dir))
    path = run.file("model_sparse.pt")
    if not path.is_file():
        raise DassError(f"{run_dir} has no model_sparse.pt; is it a finished `dass train` run? "
                        f"(resume an unfinished one with `dass train --resume {run_dir}`)")
    packed = load_sparse_model(path)
    config = build(TrainRunConfig, load_yaml(run.file(RunDir.CONFIG))).validate()
    shape = packed["meta"]["input_shape"]
    dataset = load_dataset(config.data.dataset, config.data.data_dir)
    model = build_network(config, int(shape[0]), dataset.num_classes, run.path)
    unpack_into(model, packed["packed"])
    model.eval()
    return model, config, {"input_shape": tuple(int(s) for s in shape), "dataset": dataset,
                           "bytes": path.stat().st_size, "normalization": packed["meta"]["normalization"]}


def evaluate_run(run_dir: str | Path, latency: bool = True, repeats: int = 20) -> dict:
    """Evaluate a finished run and write ``eval.json`` into it; the library twin of ``dass eval``."""
    model, config, info = load_trained(Path(run_dir))
    dataset = info["dataset"]
    stats = info["normalization"]
    norm = Normalization(torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
    test = TensorBatches(norm(dataset.x_test), torch.from_numpy(dataset.y_test), 256, 0, 0, shuffle=False)
    _, acc = evaluate_model(model, test.batches(0))
    counts = count(model, info["input_shape"])
    result = {
        "run": str(run_dir),
        "model": config.model.name if not config.model.genotype else f"genotype:{Path(config.model.genotype).name}",
        "dataset": dataset.name,
        "sparsity": config.train.sparsity,
        "pruner": config.train.pruner,
        "top1": acc,
        **counts.to_dict(),
        "checkpoint_bytes": info["bytes"],
        "dense_fp32_bytes": 4 * counts.params,
    }
    if latency:
        result["latency_b1_ms"] = 1e3 * measure_latency(model, info["input_shape"], 1, repeats=repeats)
        result["latency_b64_ms"] = 1e3 * measure_latency(model, info["input_shape"], 64, warmup=2,
                                                         repeats=max(3, repeats // 5))
        result.update(_packed_latencies(model, info["input_shape"], repeats))
    atomic_write_text(Path(run_dir) / "eval.json", json.dumps(result, indent=2) + "\n")
    return result


def _packed_latencies(model: torch.nn.Module, input_shape: tuple[int, ...], repeats: int) -> dict:
    """Latency of the same network on the packed sparse runtime (what `dass export` produces)."""
    from ..deploy.compiler import compile_model
    from ..deploy.packed import PackedModel
    from ..deploy.speed import packed_latency

    try:
        packed = PackedModel(compile_model(model, input_shape), threads=2)
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


def compare_runs(run_dirs: list[str | Path]) -> str:
    results = []
    for d in run_dirs:
        path = Path(d) / "eval.json"
        results.append(json.loads(path.read_text()) if path.is_file() else evaluate_run(d))
    return compare_table(results)
