"""The search-method interface and its registry by name.

A method says how one search step updates the architecture, the weights and the scores, and how the
final cell is selected; the run (:class:`~dass.search.searcher.DassSearch`) owns data, phases,
checkpoints and logs. A variant is a subclass that overrides one hook (NNI's ``Proxyless(DARTS)``):
``mixed_op`` (the supernet's choice module), :meth:`architecture_step`, :meth:`weight_step`,
:meth:`step` or :meth:`select`.

A method that needs more than the run's own phases (DARTS-PT's selection after the supernet is trained) adds
them with :meth:`SearchMethod.plan` (as :class:`MethodPhase`), acts at epoch ends in
:meth:`SearchMethod.end_epoch` and keeps what it decided in :meth:`SearchMethod.state_dict`, which the run's
checkpoint holds, so a run stopped anywhere resumes exactly.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager, Iterator

import torch
from torch import nn

from ...registry import Registry
from ...runner import PhaseSpec
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


@dataclass(frozen=True)
class MethodPhase(PhaseSpec):
    """A phase a method adds after the run's own (:meth:`SearchMethod.plan`); its weights train at
    ``weight_lr_scale`` times ``search.weight_lr`` (cosine towards ``search.weight_lr_min``, or that rate if lower)."""

    weight_lr_scale: float = 1.0


@dataclass(frozen=True)
class EpochEnd:
    """Where an epoch ended (``epoch`` counts from 0 within the phase), and what a method may use there:
    ``validation()`` gives the search's validation split in a fixed order, unaugmented (the batches the epoch
    record's ``val_acc`` is measured on), ``device`` is where the model lives."""

    phase: str
    epoch: int
    seed: int
    validation: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    device: torch.device


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

    def derive(self) -> Any:
        """The architecture as the search stands now (each epoch record's ``genotype``); by default the space's
        derivation rule."""
        assert self.model is not None and self.space is not None
        return self.space.derive(self.model)

    # -- hooks for methods that go beyond the run's phases (all no-ops by default) ---------------
    def plan(self, phases: list[PhaseSpec]) -> list[PhaseSpec]:
        """The run's phases given its own (``phases``: warm-up, prune, fine-tune or the single loop); a method
        may append :class:`MethodPhase` s. Called once, after :meth:`attach`."""
        return phases

    def end_epoch(self, end: EpochEnd) -> dict:
        """Called at every epoch end, before the epoch's record is made and the checkpoint written; returns
        fields to add to the record."""
        return {}

    def state_dict(self) -> dict:
        """What the method decided that the model's state does not hold (kept in the run's checkpoint)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (on resume, after the model's state is loaded)."""


METHODS: Registry[type[SearchMethod]] = Registry("search method")
register_method = METHODS.register     # class decorator: selectable by ``name`` (``search.method``, ``--method``)
available_methods = METHODS.names
get_method = METHODS.get
