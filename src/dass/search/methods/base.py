"""The search-method interface and its registry by name.

A method says how one search step updates the architecture, the weights and the scores, and how the
final cell is selected; the run (:class:`~dass.search.searcher.DassSearch`) owns data, phases,
checkpoints and logs. A variant is a subclass that overrides one hook (NNI's ``Proxyless(DARTS)``):
``mixed_op`` (the supernet's choice module), :meth:`architecture_step`, :meth:`weight_step`,
:meth:`step` or :meth:`select`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, ContextManager

import torch
from torch import nn

from ...registry import Registry
from ...space.mixed import MixedOp

if TYPE_CHECKING:
    from ...space import Genotype, SearchSpace
    from ..architect import Architect
    from ..config import SearchConfig
    from ..lower import LowerOptimizers


@dataclass(frozen=True)
class SearchBatch:
    """One step's data: a training batch (lower level) and a validation batch (upper level)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass(frozen=True)
class StepPosition:
    """Where a step is in the run; methods that draw random numbers key them by it (exact resume)."""

    seed: int
    phase: int
    epoch: int
    step: int


class SearchMethod:
    """Base class: subclasses set ``name`` and implement :meth:`step`; register them with :func:`register_method`."""

    name: ClassVar[str] = ""
    mixed_op: ClassVar[type[MixedOp]] = MixedOp

    def __init__(self, config: "SearchConfig"):
        self.config = config
        self.model: nn.Module | None = None
        self.architect: "Architect | None" = None
        self.space: "SearchSpace | None" = None

    @classmethod
    def check(cls, config: "SearchConfig") -> None:
        """Raise :class:`DassError` if the method cannot run with ``config``."""

    def attach(self, model: nn.Module, architect: "Architect", space: "SearchSpace") -> None:
        """Bind the built supernet, its architect and its space (called once, before any phase)."""
        self.model, self.architect, self.space = model, architect, space

    def enter_phase(self) -> None:
        """Called when a phase starts or resumes, after the run has set masks and optimizers."""

    def step(self, batch: SearchBatch, lower: "LowerOptimizers", position: StepPosition) -> dict[str, float]:
        """One search step; returns sums for the epoch log (``arch_loss``, ``train_loss``, ``train_correct``,
        ``train_count``)."""
        raise NotImplementedError

    def measuring(self) -> ContextManager[None]:
        """A context in which forward passes run every op of every edge (the cost model's measurements)."""
        return nullcontext()

    def select(self) -> "Genotype":
        """The final architecture (Archai's finalizer); by default the space's derivation rule."""
        assert self.model is not None and self.space is not None
        return self.space.derive(self.model)


METHODS: Registry[type[SearchMethod]] = Registry("search method")
register_method = METHODS.register     # class decorator: selectable by ``name`` (``search.method``, ``--method``)
available_methods = METHODS.names
get_method = METHODS.get
