"""Sparse drop-in replacements for ``nn.Conv2d`` and ``nn.Linear`` (HYDRA-style score masks).

Each layer keeps its dense weight W plus a score tensor S of W's shape. The forward pass uses
``W * M`` where M keeps the top ``keep_ratio`` fraction of ``|S|`` (within the layer, or across a
:class:`GlobalMaskGroup` of layers), the count rounded by the kept-weight rule (:func:`set_kept_rule`).
The mask is piecewise constant in S, so its gradient is taken straight-through:
``dL/dS = sign(S) * W * dL/d(W*M)``. The bias is never masked.

Masks are cached and recomputed only when the scores or the keep ratio change (tracked through the
tensor version counter), so a frozen mask costs one multiply per forward and nothing more.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.ops import conv2d


class _StraightThrough(torch.autograd.Function):
    """Returns a precomputed 0/1 mask; passes the incoming gradient to the magnitudes unchanged."""

    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def topk_mask(magnitudes: torch.Tensor, keep: int) -> torch.Tensor:
    """0/1 mask (same dtype) with exactly ``keep`` ones at the largest entries; ties broken by index."""
    flat = magnitudes.detach().reshape(-1)
    if keep >= flat.numel():
        return torch.ones_like(magnitudes)
    mask = torch.zeros_like(flat)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = 1
    return mask.view_as(magnitudes)


# How many of a layer's n weights a keep ratio k keeps: "round" keeps round(k * n) (Python's round, half to
# even); "authors" keeps n - int((1 - k) * n), as the DASS/HYDRA code (``GetSubnet``) does, which is one more
# whenever k * n has a fractional part below one half (about half of the layers). Both keep at least one weight.
KEPT_RULES = ("round", "authors")
_kept_rule = "round"


def kept_count(numel: int, keep_ratio: float, rule: str | None = None) -> int:
    """Number of weights a keep ratio keeps, under ``rule`` (default: the rule in force, :func:`set_kept_rule`);
    at least one, so no layer is cut off entirely."""
    rule = _kept_rule if rule is None else rule
    if rule == "round":
        kept = int(round(keep_ratio * numel))
    elif rule == "authors":
        kept = numel - int((1.0 - keep_ratio) * numel)
    else:
        raise ValueError(f"kept-weight rule must be one of {', '.join(KEPT_RULES)}, got {rule!r}")
    return max(1, min(numel, kept))


def get_kept_rule() -> str:
    return _kept_rule


def set_kept_rule(rule: str) -> str:
    """Make ``rule`` (``round`` | ``authors``) the one sparsities are set with from now on; returns the previous.

    The rule acts when a keep ratio is *assigned* (:func:`~dass.sparse.set_sparsity`, ``layer.keep_ratio = k``,
    a new :class:`GlobalMaskGroup`): a layer stores the ratio ``kept / n`` of the count the rule gives, and its
    mask always keeps ``round(stored * n)`` weights, which is that count. So a saved or packed model reproduces
    its masks whatever rule is in force when it is loaded; only runs that set sparsities need the setting.
    """
    global _kept_rule
    if rule not in KEPT_RULES:
        raise ValueError(f"kept-weight rule must be one of {', '.join(KEPT_RULES)}, got {rule!r}")
    previous, _kept_rule = _kept_rule, rule
    return previous


@contextmanager
def using_kept_rule(rule: str) -> Iterator[None]:
    """``with using_kept_rule("authors"): ...`` sets sparsities under ``rule``, then restores the previous one."""
    previous = set_kept_rule(rule)
    try:
        yield
    finally:
        set_kept_rule(previous)


class SparseMixin:
    """Shared state and mask logic for sparse layers; the concrete class supplies ``_apply_op``."""

    weight: nn.Parameter
    scores: nn.Parameter
    keep_ratio_buf: torch.Tensor

    def _init_sparse(self) -> None:
        self.scores = nn.Parameter(torch.zeros_like(self.weight), requires_grad=False)
        # A buffer so that checkpoints record the sparsity each layer runs at.
        self.register_buffer("keep_ratio_buf", torch.ones((), dtype=torch.float64))
        self.group: GlobalMaskGroup | None = None
        self._mask_cache: torch.Tensor | None = None
        self._mask_key: tuple | None = None

    # -- sparsity state -------------------------------------------------------------------
    @property
    def keep_ratio(self) -> float:
        return float(self.keep_ratio_buf)

    @keep_ratio.setter
    def keep_ratio(self, value: float) -> None:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"keep ratio must be in (0, 1], got {value}")
        if _kept_rule != "round" and value < 1.0:  # store the ratio whose rounded count is the rule's count
            n = self.weight.numel()
            value = kept_count(n, value) / n
        self.keep_ratio_buf.fill_(value)

    @property
    def is_dense(self) -> bool:
        return self.group is None and self.keep_ratio >= 1.0

    @property
    def fan_in(self) -> int:
        return self.weight[0].numel()

    @torch.no_grad()
    def init_scores_from_weights(self) -> None:
        """S = sqrt(6 / fan_in) * W / max|W|: the first mask equals layer-wise magnitude pruning."""
        w = self.weight.detach()
        peak = w.abs().max().clamp_min(torch.finfo(w.dtype).tiny)
        self.scores.copy_(math.sqrt(6.0 / self.fan_in) * w / peak)

    def mask(self) -> torch.Tensor:
        """The current 0/1 mask (no gradient); cached until the scores or the ratio change."""
        if self.group is not None:
            return self.group.mask_for(self)
        key = (self.scores._version, id(self.scores), self.keep_ratio, self.scores.dtype, self.scores.device)
        if self._mask_cache is None or self._mask_key != key:
            keep = kept_count(self.scores.numel(), self.keep_ratio, "round")  # the stored ratio is exact: see setter
            self._mask_cache = topk_mask(self.scores.abs(), keep)
            self._mask_key = key
        return self._mask_cache

    def effective_weight(self) -> torch.Tensor:
        """W * M with the straight-through path to the scores when they train."""
        if self.is_dense:
            return self.weight
        mask = self.mask()
        if self.scores.requires_grad and torch.is_grad_enabled():
            mask = _StraightThrough.apply(self.scores.abs(), mask)
        return self.weight * mask

    def nonzero_count(self) -> int:
        if self.is_dense:
            return int(self.weight.numel())
        return int(self.mask().sum().item())


class SparseConv2d(SparseMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight is masked by the top-k of a learned score tensor."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_sparse()

    def forward(self, x: torch.Tensor, relu_input: bool = False) -> torch.Tensor:
        """The convolution of ``x`` (of ``relu(x)`` with ``relu_input``: fused where the kernels allow)."""
        if self.padding_mode != "zeros":
            return self._conv_forward(F.relu(x) if relu_input else x, self.effective_weight(), self.bias)
        # depthwise and 1x1 convolutions run on dass's CPU kernels where they apply (PyTorch's otherwise)
        return conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups,
                      relu_input)


class SparseLinear(SparseMixin, nn.Linear):
    """``nn.Linear`` whose weight is masked by the top-k of a learned score tensor."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_sparse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


SPARSE_TYPES = (SparseConv2d, SparseLinear)


def sparse_layers(model: nn.Module) -> Iterator[tuple[str, SparseMixin]]:
    """Named sparse layers of a model, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, SPARSE_TYPES):
            yield name, module


class GlobalMaskGroup:
    """One magnitude threshold across several layers: keeps exactly ``kept_count(total, k)`` weights, under the
    kept-weight rule in force when the group is made.

    Layers with different fan-in have scores on different scales after the scaled-magnitude
    initialisation; this is the point of the sqrt(6/fan_in) factor, which puts them on the
    scale of a Kaiming-uniform bound so that a global comparison is meaningful.
    """

    def __init__(self, layers: Iterable[SparseMixin], keep_ratio: float) -> None:
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("a global mask group needs at least one sparse layer")
        self.keep_ratio = keep_ratio
        self.kept_rule = _kept_rule
        self._masks: dict[int, torch.Tensor] = {}
        self._key: tuple | None = None
        for layer in self.layers:
            layer.group = self
            layer.keep_ratio = keep_ratio

    def detach(self) -> None:
        for layer in self.layers:
            layer.group = None

    def _current_key(self) -> tuple:
        return (self.keep_ratio,) + tuple(
            (l.scores._version, id(l.scores), l.scores.dtype, l.scores.device) for l in self.layers
        )

    def mask_for(self, layer: SparseMixin) -> torch.Tensor:
        key = self._current_key()
        if key != self._key:
            self._recompute()
            self._key = key
        return self._masks[id(layer)]

    @torch.no_grad()
    def _recompute(self) -> None:
        flat = torch.cat([l.scores.detach().abs().reshape(-1).float() for l in self.layers])
        keep = kept_count(flat.numel(), self.keep_ratio, self.kept_rule)
        mask = topk_mask(flat, keep)
        self._masks = {}
        start = 0
        for layer in self.layers:
            n = layer.scores.numel()
            self._masks[id(layer)] = mask[start:start + n].view_as(layer.scores).to(layer.scores)
            start += n
