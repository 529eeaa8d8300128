"""Deployment: inference graphs (masks applied, batch norm folded), ONNX export, the packed sparse runtime.

Names load lazily: ``dass.deploy.packed`` (running a packed model) needs NumPy and the compiled kernels
only, not PyTorch.
"""

from importlib import import_module

_NAMES = {"fold_batchnorm": ".fold", "materialize": ".fold", "compile_model": ".compiler",
          "CompileOptions": ".compiler", "register_lowering": ".compiler",
          "PackedModel": ".packed", "compare_speed": ".speed"}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
