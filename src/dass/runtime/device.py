"""``--device``: where models and batches live (``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked before work starts.

dass's compiled CPU kernels run only on CPU tensors (``dass.kernels`` falls back to PyTorch's ops for any
other device), so nothing else has to know about the device but the code that places tensors.
"""

from __future__ import annotations

import re

import torch

from ..errors import DassError

_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """The ``torch.device`` for ``spec`` (None: cpu); a clear error if it is malformed or absent here."""
    if spec is None:
        return torch.device("cpu")
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = str(spec).strip().lower()
    if not _PATTERN.match(text):
        raise DassError(f"device must be cpu, cuda, cuda:N or mps, got {spec!r}")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DassError(f"device {text} asked for, but this PyTorch sees no CUDA GPU "
                            f"(build {torch.__version__}); use --device cpu or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DassError(f"device {text} asked for, but only {count} CUDA GPU(s) are visible "
                            f"(cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DassError("device mps asked for, but this PyTorch has no usable Apple MPS backend; use --device cpu")
    return device


def to_device(obj, device: torch.device, channels_last: bool = False):
    """Tensors (also inside tuples and lists) moved to ``device`` (image batches NHWC in memory with
    ``channels_last``); a CPU tensor stays the same object on cpu."""
    if isinstance(obj, torch.Tensor):
        if channels_last and obj.dim() == 4:
            return obj.to(device, memory_format=torch.channels_last)
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device, channels_last) for o in obj)
    return obj
