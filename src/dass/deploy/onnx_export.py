"""ONNX export of the folded inference graph, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..errors import DassError
from .fold import fold_batchnorm


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = 18) -> Path:
    """Write the masked, BN-folded model as ONNX with a dynamic batch dimension."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise DassError("ONNX export needs the onnx extra: pip install -c constraints.txt -e '.[onnx]'") from None
    folded = fold_batchnorm(model)
    example = torch.randn(2, *input_shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter():
        torch.onnx.export(folded, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, opset_version=opset, dynamo=True,
                          verbose=False)
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's notes (torchvision ops it skips, deprecations) are not the user's business."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...], batch: int = 4,
               seed: int = 0) -> float:
    """Max abs difference between onnxruntime on ``path`` and the PyTorch model on the same random input."""
    import onnxruntime as ort

    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    return float(np.abs(out - ref).max())
