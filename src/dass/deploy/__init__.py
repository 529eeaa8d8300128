"""Deployment: pruned models as inference graphs (masks applied, batch norm folded), ONNX export."""

from .fold import fold_batchnorm, materialize

__all__ = ["fold_batchnorm", "materialize"]
