"""Run plumbing used by every stage: config, run directory, checkpoints, atomic files.

Names load lazily, so that torch-free parts (``dass.runtime.files``, used by the packed runtime) do not
import PyTorch.
"""

from importlib import import_module

_NAMES = {
    "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint",
    "atomic_write": ".files", "atomic_write_text": ".files",
    "RunDir": ".rundir", "new_run_dir": ".rundir",
    "resolve_device": ".device", "RunOptions": ".options",
}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
