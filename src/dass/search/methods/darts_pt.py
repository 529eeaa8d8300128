"""DARTS-PT (Wang et al., "Rethinking Architecture Selection in Differentiable NAS", ICLR 2021): the cell is
selected by perturbation, not by the magnitude of alpha.

The supernet trains as ``darts`` does (DASS's phases included), or with the alphas frozen at uniform
(``darts-pt-fixed-alpha``); then a selection phase decides the cell one edge at a time, on the masked
supernet:

* the edges are taken in a random order drawn from the run's seed (one normal and one reduction edge per
  decision in the DARTS space; one edge of the shared cell in NB-201);
* an op's strength is the supernet's validation accuracy with that op's weight on the edge set to zero (its
  output contribution removed; every other edge unchanged, the decided ones one-hot on their op); the edge
  keeps the op whose removal hurts most: the lowest accuracy, then the highest loss, then the first op;
* in the DARTS space, once every edge has its op, each node with more than two inputs (random order, one
  normal and one reduction node per decision) keeps the two input edges whose removal (the edge's whole
  output set to zero) hurts most, by the same test;
* before each decision the supernet tunes ``darts_pt.tune_epochs`` epochs, at a tenth of the search's weight
  learning rate (cosine towards ``search.weight_lr_min``), the architecture steps continuing for ``darts-pt``.

The selection is a phase of the run (``select``: decisions x tune epochs), a decision is made at the end of
every ``tune_epochs``-th epoch and logged in that epoch's record (``selection``: the accuracy and loss with
each op or input removed, and the choice), and what was decided is in the checkpoint
(:meth:`DartsPT.state_dict`): a search stopped anywhere resumes exactly. The final genotype is the decisions'.

The reference code (``ruocwang/darts-pt``) was read, not copied; where this differs from it (``none`` is no
candidate in the DARTS space, the tune-then-decide schedule, ties) is in docs/method-notes.md.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Callable, ContextManager, Iterable, Iterator

import torch
from torch import nn

from ...data import stream_generator
from ...errors import DassError
from ...loop import mean_loss_and_accuracy
from ...runner import PhaseSpec
from ...space import Genotype, NB201Genotype, NB201Supernet, Supernet, num_edges
from ...space.mixed import MixedOp
from ...space.nb201 import edge_name as nb201_edge_name
from ...sparse import Phase
from ..architect import preserved_buffers
from ..lower import LowerOptimizers
from .base import EpochEnd, MethodPhase, SearchBatch, StepPosition, register_method
from .darts import Darts

log = logging.getLogger(__name__)

SELECT_PHASE = "select"   # the name of the selection phase in the plan and the log
SELECTION_STREAM = 5      # the random stream of the edge order (1-3: data; 4: proxyless' paths)
TUNE_LR_SCALE = 0.1       # the tuning's weight learning rate, as a fraction of search.weight_lr (the paper's)

Key = tuple[str, int]      # (cell kind, edge index within the cell)


@dataclass
class DartsPTConfig:
    """``search.darts_pt``: the options of the DARTS-PT selection (``darts-pt``, ``darts-pt-fixed-alpha``)."""

    tune_epochs: int = 1      # epochs the supernet tunes before each decision (the reference scripts: 5)
    eval_batches: int = 4     # validation batches (max(batch_size, 256) images each) per test; 0: the whole split


# -- the supernet's side: mixed ops that the selection can fix, perturb or switch off --------------------
class Projection:
    """What the selection has decided, and what it removes for the test under way, as the supernet's mixed ops
    see it; one object shared by all of them (:class:`ProjectedMixedOp`)."""

    def __init__(self) -> None:
        self.ops: dict[Key, int] = {}           # decided edges: the op each runs alone (one-hot weights)
        self.dropped: set[Key] = set()          # edges the topology step removed: their output is zero
        self.removed: tuple[str, int, int | None] | None = None   # under test: (kind, edge, op), op None: the edge
        self.enabled = True

    @contextmanager
    def removing(self, kind: str, edge: int, op: int | None = None) -> Iterator[None]:
        """Within the block, ``op``'s weight on ``edge`` of every ``kind`` cell is zero (``op=None``: the edge's
        whole output is zero)."""
        self.removed = (kind, edge, op)
        try:
            yield
        finally:
            self.removed = None

    @contextmanager
    def lifted(self) -> Iterator[None]:
        """Within the block every mixed op runs every op, softmax-weighted (the cost model's measurements)."""
        saved, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = saved

    def edge_off(self, key: Key | None) -> bool:
        if not self.enabled or key is None:
            return False
        r = self.removed
        return key in self.dropped or (r is not None and r[2] is None and (r[0], r[1]) == key)


def _switch_off(module: "ProjectedMixedOp", inputs, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: a removed edge outputs zeros (also the bypassed channels of a partial-channel edge)."""
    p = module.projection
    return torch.zeros_like(output) if p is not None and p.edge_off(module.key) else None


class ProjectedMixedOp(MixedOp):
    """A mixed op that follows a :class:`Projection`: a decided edge runs its op alone (weight exactly 1), an op
    under test has its weight zeroed (its output no longer reaches the sum), a removed edge outputs zeros.
    Without a projection, or with nothing decided or under test, it is :class:`MixedOp` exactly."""

    def __init__(self, channels: int, stride: int, ops) -> None:
        super().__init__(channels, stride, ops)
        self.projection: Projection | None = None
        self.key: Key | None = None
        self.register_forward_hook(_switch_off)

    def mix(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        p = self.projection
        if p is None or not p.enabled or self.key is None:
            return super().mix(x, weights)
        chosen = p.ops.get(self.key)
        if chosen is not None:
            return self.ops[chosen](x)
        r = p.removed
        if r is not None and r[2] is not None and (r[0], r[1]) == self.key:
            keep = torch.ones_like(weights)
            keep[r[2]] = 0.0
            weights = weights * keep
        return super().mix(x, weights)


# -- the test ------------------------------------------------------------------------------------
@torch.no_grad()
def removal_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device | None = None) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``batches``, batch norm normalising with each batch's
    own statistics (as the paper's code evaluates the perturbed supernet: the running statistics were gathered
    with every op in place); the running statistics are left as they were. Batches of one image are skipped
    (batch norm cannot normalise them). In a data-parallel run each rank takes its part and the totals are summed."""
    was_training = model.training
    model.train()
    try:
        with preserved_buffers(model):
            loss, accuracy = mean_loss_and_accuracy(model, batches, device, min_batch=2)
    finally:
        model.train(was_training)
    return accuracy, loss


def _hurts_most(results: dict[int, tuple[float, float]]) -> list[int]:
    """The candidates, the one whose removal hurts most first: lowest accuracy, then highest loss, then first."""
    return sorted(results, key=lambda k: (results[k][0], -results[k][1], k))


# -- the method ----------------------------------------------------------------------------------
@register_method
class DartsPT(Darts):
    """DARTS, then perturbation-based selection (``search.darts_pt``)."""

    name = "darts-pt"
    mixed_op = ProjectedMixedOp

    def __init__(self, config) -> None:
        super().__init__(config)
        self.options: DartsPTConfig = config.darts_pt
        self.projection = Projection()
        self.kinds: list[str] = []                 # the cell kinds with their own alphas
        self.edges = 0                             # edges per cell
        self.op_names: list[str] = []
        self.candidates: list[int] = []            # the ops an edge may keep
        self.node_inputs: dict[int, list[int]] = {}   # DARTS: node -> its input edges (nodes with > 2 inputs)
        self.order: dict[str, list[int]] = {}      # per kind: the edges in decision order
        self.node_order: dict[str, list[int]] = {}  # per kind: the nodes in decision order (DARTS)
        self.kept: dict[Key, list[int]] = {}       # (kind, node) -> its two kept inputs
        self.decisions = 0

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        o = config.darts_pt
        if isinstance(o.tune_epochs, bool) or not isinstance(o.tune_epochs, int) or o.tune_epochs < 1:
            raise DassError(f"search.darts_pt.tune_epochs must be a whole number >= 1 (epochs of tuning before each "
                            f"decision), got {o.tune_epochs!r}")
        if isinstance(o.eval_batches, bool) or not isinstance(o.eval_batches, int) or o.eval_batches < 0:
            raise DassError(f"search.darts_pt.eval_batches must be a whole number >= 0 (0: the whole validation "
                            f"split), got {o.eval_batches!r}")

    def attach(self, model: nn.Module, architect, space) -> None:
        super().attach(model, architect, space)
        self.op_names = list(model.config.ops)
        if isinstance(model, Supernet):
            self.kinds = ["normal", "reduce"]
            nodes = model.config.nodes
            self.edges = num_edges(nodes)
            start = 0
            for i in range(nodes):   # node i reads the 2 cell inputs and nodes 0..i-1
                if i > 0:
                    self.node_inputs[i] = list(range(start, start + 2 + i))
                start += 2 + i
            # a DARTS genotype never holds none (nor does removing it change anything): it is no candidate
            self.candidates = [k for k, op in enumerate(self.op_names) if op != "none"]
        elif isinstance(model, NB201Supernet):
            self.kinds = ["normal"]
            self.edges = model.alphas.shape[0]
            self.candidates = list(range(len(self.op_names)))   # NB-201 cells may hold none
        else:
            raise DassError(f"search method {self.name} supports the darts and nb201 spaces, not {space.name}")
        for cell in model.cells:
            for k, edge in enumerate(getattr(cell, "edges", ())):
                if isinstance(edge, ProjectedMixedOp):
                    edge.projection = self.projection
                    edge.key = ("reduce" if getattr(cell, "reduction", False) else "normal", k)

    @property
    def num_decisions(self) -> int:
        return self.edges + len(self.node_inputs)

    @property
    def complete(self) -> bool:
        return self.decisions >= self.num_decisions

    # -- the plan: the selection phase after the run's own -----------------------------------------
    def plan(self, phases: list[PhaseSpec]) -> list[PhaseSpec]:
        ran = [p for p in phases if p.epochs > 0]
        # the selection tunes the supernet as the run left it: under the fixed mask after a sparse phase, else dense
        phase = Phase.FINETUNE if ran and ran[-1].sparse else Phase.DENSE
        return phases + [MethodPhase(SELECT_PHASE, phase, self.num_decisions * self.options.tune_epochs,
                                     weight_lr_scale=TUNE_LR_SCALE)]

    def measuring(self) -> ContextManager[None]:
        return self.projection.lifted()

    # -- decisions -------------------------------------------------------------------------------------
    def end_epoch(self, end: EpochEnd) -> dict:
        if end.phase != SELECT_PHASE or (end.epoch + 1) % self.options.tune_epochs:
            return {}
        if self.decisions >= min((end.epoch + 1) // self.options.tune_epochs, self.num_decisions):
            return {}   # (never on a consistent run: the checkpoint after a decision holds it)
        if not self.order:
            self.draw_order(end.seed)
        limit = self.options.eval_batches or None

        def measure() -> tuple[float, float]:
            assert self.model is not None
            return removal_accuracy(self.model, islice(end.validation(), limit), end.device)

        return {"selection": self.decide(measure)}

    def draw_order(self, seed: int) -> None:
        """The edges' (and nodes') decision order per cell kind, drawn from the run's seed."""
        nodes = sorted(self.node_inputs)
        for i, kind in enumerate(self.kinds):
            edges = torch.randperm(self.edges, generator=stream_generator(seed, SELECTION_STREAM, i))
            self.order[kind] = edges.tolist()
            perm = torch.randperm(len(nodes), generator=stream_generator(seed, SELECTION_STREAM, len(self.kinds) + i))
            self.node_order[kind] = [nodes[j] for j in perm.tolist()]

    def decide(self, measure: Callable[[], tuple[float, float]]) -> dict:
        """The next decision (an op for one edge of each cell kind, or two inputs for one node of each); returns
        its log record."""
        index = self.decisions
        if index < self.edges:
            entries = [self.decide_op(kind, self.order[kind][index], measure) for kind in self.kinds]
            record = {"decision": index + 1, "of": self.num_decisions, "step": "op", "edges": entries}
        else:
            entries = [self.decide_inputs(kind, self.node_order[kind][index - self.edges], measure)
                       for kind in self.kinds]
            record = {"decision": index + 1, "of": self.num_decisions, "step": "topology", "nodes": entries}
        self.decisions += 1
        for e in entries:
            if "chosen" in e:
                log.info("darts-pt decision %d/%d: %s edge %s keeps %s (val_acc with each op removed: %s)", index + 1,
                         self.num_decisions, e["cell"], e["name"], e["chosen"],
                         ", ".join(f"{op} {r['val_acc']:.4f}" for op, r in e["removed"].items()))
            else:
                log.info("darts-pt decision %d/%d: %s node %d keeps inputs %s", index + 1, self.num_decisions,
                         e["cell"], e["node"], e["kept"])
        return record

    def decide_op(self, kind: str, edge: int, measure: Callable[[], tuple[float, float]]) -> dict:
        """Keep on ``edge`` (of every ``kind`` cell) the op whose removal hurts the validation accuracy most."""
        results: dict[int, tuple[float, float]] = {}
        for k in self.candidates:
            with self.projection.removing(kind, edge, k):
                results[k] = measure()
        best = _hurts_most(results)[0]
        self.projection.ops[(kind, edge)] = best
        return {"cell": kind, "edge": edge, "name": self.edge_label(edge),
                "removed": {self.op_names[k]: {"val_acc": acc, "val_loss": loss} for k, (acc, loss) in results.items()},
                "chosen": self.op_names[best]}

    def decide_inputs(self, kind: str, node: int, measure: Callable[[], tuple[float, float]]) -> dict:
        """Keep the two input edges of ``node`` whose removal hurts the validation accuracy most (DARTS)."""
        edges = self.node_inputs[node]
        results: dict[int, tuple[float, float]] = {}
        for j, edge in enumerate(edges):
            with self.projection.removing(kind, edge):
                results[j] = measure()
        kept = sorted(_hurts_most(results)[:2])
        self.kept[(kind, node)] = kept
        self.projection.dropped.update((kind, edge) for j, edge in enumerate(edges) if j not in kept)
        return {"cell": kind, "node": node,
                "removed": {str(j): {"val_acc": acc, "val_loss": loss} for j, (acc, loss) in results.items()},
                "kept": kept}

    def edge_label(self, edge: int) -> str:
        """``node I <- J`` (DARTS: inputs 0 and 1 are the cell's inputs, J >= 2 is node J - 2) or NB-201's ``I<-J``."""
        if isinstance(self.model, NB201Supernet):
            return nb201_edge_name(edge)
        start, i = 0, 0
        while edge >= start + 2 + i:
            start += 2 + i
            i += 1
        return f"node {i} <- {edge - start}"

    # -- state (in the run's checkpoint) ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "decisions": self.decisions,
            "order": {k: list(v) for k, v in self.order.items()},
            "node_order": {k: list(v) for k, v in self.node_order.items()},
            "ops": [[kind, edge, op] for (kind, edge), op in sorted(self.projection.ops.items())],
            "kept": [[kind, node, list(inputs)] for (kind, node), inputs in sorted(self.kept.items())],
        }

    def load_state_dict(self, state: dict) -> None:
        self.decisions = int(state.get("decisions", 0))
        self.order = {str(k): [int(e) for e in v] for k, v in state.get("order", {}).items()}
        self.node_order = {str(k): [int(n) for n in v] for k, v in state.get("node_order", {}).items()}
        self.projection.ops = {(str(kind), int(edge)): int(op) for kind, edge, op in state.get("ops", [])}
        self.kept = {(str(kind), int(node)): [int(j) for j in inputs] for kind, node, inputs in state.get("kept", [])}
        self.projection.dropped = {(kind, edge) for (kind, node), inputs in self.kept.items()
                                   for j, edge in enumerate(self.node_inputs[node]) if j not in inputs}

    # -- the architecture ----------------------------------------------------------------------------
    def select(self):
        """The decisions' cell (every edge and node is decided once the selection phase has run)."""
        return self.derive()

    def derive(self):
        """Decided edges and nodes as decided; the rest by the space's rule on the alphas (all of them before the
        first decision: the space's own derivation)."""
        assert self.model is not None
        if not self.decisions:
            return super().derive()
        if isinstance(self.model, NB201Supernet):
            alphas = self.model.alphas.detach()
            return NB201Genotype(tuple(self.op_names[self.projection.ops.get(("normal", k), int(alphas[k].argmax()))]
                                       for k in range(self.edges)))
        m = self.model
        nodes = m.config.nodes
        concat = list(range(2 + nodes - m.config.multiplier, nodes + 2))
        return Genotype(self._darts_cell("normal", m.alphas_normal, m.betas_normal), concat,
                        self._darts_cell("reduce", m.alphas_reduce, m.betas_reduce), concat)

    def _darts_cell(self, kind: str, alphas: torch.Tensor, betas: torch.Tensor | None) -> list[tuple[str, int]]:
        """DARTS' rule (as :func:`~dass.space.genotype.derive_genotype`) on the projected weights: decided edges
        one-hot, decided nodes their kept inputs."""
        assert isinstance(self.model, Supernet)
        with torch.no_grad():
            w = torch.softmax(alphas.detach().float(), dim=-1)
            edge_w = self.model.edge_weights(betas)
            if edge_w is not None:
                w = w * edge_w.detach().float()[:, None]
        for (k_kind, edge), op in self.projection.ops.items():
            if k_kind == kind:
                w[edge] = 0.0
                w[edge, op] = 1.0
        out: list[tuple[str, int]] = []
        start = 0
        for i in range(self.model.config.nodes):
            n = 2 + i
            rows = w[start:start + n]
            if (kind, i) in self.kept:
                inputs = self.kept[(kind, i)]
            else:
                strength = [max(float(rows[j, k]) for k in self.candidates) for j in range(n)]
                inputs = sorted(range(n), key=lambda j: -strength[j])[:2]
            for j in inputs:
                out.append((self.op_names[max(self.candidates, key=lambda k: float(rows[j, k]))], j))
            start += n
        return out


@register_method
class DartsPTFixedAlpha(DartsPT):
    """DARTS-PT on a supernet trained with the alphas frozen at uniform: weight steps only, no architecture
    steps, then the same selection."""

    name = "darts-pt-fixed-alpha"

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.cost_weight > 0:
            raise DassError("search.cost_weight > 0 acts through the alphas, which darts-pt-fixed-alpha never trains; "
                            "leave it at 0 or use --method darts-pt")

    def attach(self, model: nn.Module, architect, space) -> None:
        super().attach(model, architect, space)
        with torch.no_grad():
            for p in model.arch_parameters():
                p.zero_()   # softmax(0): every op weighs the same (and every edge, under PC-DARTS' betas)

    def step(self, batch: SearchBatch, lower: LowerOptimizers, position: StepPosition) -> dict[str, float]:
        loss, correct = self.weight_step(batch, lower)
        return {"train_loss": loss, "train_correct": correct, "train_count": len(batch.y_train)}


__all__ = ["DartsPT", "DartsPTConfig", "DartsPTFixedAlpha", "Projection", "ProjectedMixedOp", "removal_accuracy",
           "SELECT_PHASE"]
