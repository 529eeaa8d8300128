"""The contract between training and everything downstream (evaluation, export, benchmarks).

A finished ``dass train`` run directory holds ``config.yaml`` and ``model_sparse.pt``; :func:`load_trained`
turns it into a :class:`TrainedModel`, so deployment never reads training's files or dicts itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import ImageDataset, Normalization
from .data.setup import load_data
from .errors import DassError
from .runtime import RunDir
from .runtime.config import build, load_yaml
from .runtime.device import resolve_device
from .sparse.serialize import load_sparse_model, unpack_into
from .train.config import TrainRunConfig
from .train.pipeline import build_network

MODEL_FILE = "model_sparse.pt"


@dataclass
class TrainedModel:
    """A trained, pruned network in eval mode, and what it needs to be fed."""

    model: nn.Module
    config: TrainRunConfig
    normalization: Normalization
    input_shape: tuple[int, int, int]    # C, H, W
    dataset: ImageDataset
    checkpoint_bytes: int
    run_dir: Path

    def test_images(self, count: int | None = None) -> torch.Tensor:
        """The first ``count`` (default all) test images, normalized as in training, on the CPU."""
        return self.normalization(self.dataset.x_test[:count]).contiguous()

    @property
    def test_labels(self) -> torch.Tensor:
        return torch.from_numpy(self.dataset.y_test)


def load_trained(run_dir: str | Path, device: str | torch.device | None = None) -> TrainedModel:
    """The finished training run in ``run_dir``, its model on ``device`` (default cpu)."""
    run = RunDir(Path(run_dir))
    path = run.file(MODEL_FILE)
    if not path.is_file():
        raise DassError(f"{run_dir} has no {MODEL_FILE}; is it a finished `dass train` run? "
                        f"(resume an unfinished one with `dass train --resume {run_dir}`)")
    target = resolve_device(device)
    packed = load_sparse_model(path)
    config = build(TrainRunConfig, load_yaml(run.file(RunDir.CONFIG))).validate()
    try:
        meta = packed["meta"]
        shape = tuple(int(s) for s in meta["input_shape"])
        stats = meta["normalization"]
        norm = Normalization(torch.tensor(stats["mean"], dtype=torch.float32),
                             torch.tensor(stats["std"], dtype=torch.float32))
        if len(shape) != 3 or min(shape) < 1 or norm.mean.shape != (shape[0],) or norm.std.shape != (shape[0],) \
                or not bool((norm.std > 0).all()):
            raise ValueError("input shape or normalization out of range")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise DassError(f"{path} is damaged ({exc}); train the run again or restore the file") from None
    dataset = load_data(config.data)   # (with the run's folder options: image size, split)
    if tuple(dataset.x_test.shape[1:]) != (shape[1], shape[2], shape[0]):
        raise DassError(f"{path} was trained on images of shape {shape} (C,H,W) but the dataset "
                        f"{config.data.dataset} now has {tuple(dataset.x_test.shape[1:])} (H,W,C)")
    model = build_network(config, shape[0], dataset.num_classes, run.path)
    unpack_into(model, packed["packed"])
    return TrainedModel(model.to(target).eval(), config, norm, shape, dataset, path.stat().st_size, run.path)
