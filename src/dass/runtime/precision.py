"""Mixed precision (``precision: fp32 | bf16 | fp16``): autocast for forward passes, dynamic loss scaling for fp16.

Gradients are computed with ``torch.autograd.grad`` (not ``backward``), so the loss scaling is done here
rather than by ``torch.amp.GradScaler``: the loss is multiplied by the scale, the gradients divided by it,
and a step whose gradients overflow is skipped and halves the scale (doubled again after
``GROWTH_INTERVAL`` good steps), as GradScaler does. The scale is part of the checkpoint, so a resumed run
continues exactly. The second-order architecture step runs in float32 (:meth:`Precision.full`): its finite
difference divides rounding errors by a small radius.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch

from ..errors import DassError

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
INITIAL_SCALE = 2.0 ** 16
GROWTH_INTERVAL = 2000


class Precision:
    def __init__(self, name: str = "fp32", device_type: str = "cpu"):
        if name not in PRECISIONS:
            raise DassError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
        self.name = name
        self.dtype = PRECISIONS[name]
        self.device_type = device_type
        self.scale = INITIAL_SCALE if name == "fp16" else 1.0
        self.good_steps = 0
        self.skipped = 0

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Forward passes in the reduced precision (a no-op in fp32)."""
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device_type, dtype=self.dtype):
                yield

    @contextlib.contextmanager
    def full(self) -> Iterator[None]:
        """Float32 inside an autocast region (e.g. the second-order step's finite differences)."""
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device_type, enabled=False):
                yield

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.scale != 1.0 else loss

    def unscale(self, grads: Sequence[torch.Tensor | None]) -> tuple[list[torch.Tensor | None], bool]:
        """The gradients of the unscaled loss, and whether they are all finite (else: skip this step)."""
        if self.scale == 1.0:
            return list(grads), True
        inverse = 1.0 / self.scale
        out = [None if g is None else g * inverse for g in grads]
        finite = all(bool(torch.isfinite(g).all()) for g in out if g is not None)
        return out, finite

    def update(self, finite: bool) -> None:
        """After a step: halve the scale on overflow (the step was skipped), grow it after a good stretch."""
        if self.name != "fp16":
            return
        if not finite:
            self.scale = max(self.scale / 2.0, 1.0)
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps >= GROWTH_INTERVAL and math.isfinite(self.scale * 2.0):
            self.scale *= 2.0
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"name": self.name, "scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped = int(state.get("skipped", 0))


_CURRENT = Precision()


def current_precision() -> Precision:
    return _CURRENT


def set_precision(precision: Precision) -> Precision:
    """Make ``precision`` the one the training steps use (a run sets it when it starts)."""
    global _CURRENT
    _CURRENT = precision
    return precision
