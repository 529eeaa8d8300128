"""The DASS search: a sparsity-aware bi-level optimisation of a sparse DARTS supernet.

Three phases in one run (``three_phase``):

1. ``warmup``   dense (keep ratio 1): per batch an architecture step, then a weight step;
2. ``prune``    scores initialised from the scaled weight magnitudes, then trained at the target
                sparsity with the weights frozen; architecture steps see the masked supernet;
3. ``finetune`` the mask is frozen; weights and architecture train under it.

``single_loop`` runs one phase at a fixed sparsity where each batch gets an architecture step,
a weight step and a score step in turn.

All randomness during training is derived from ``(seed, epoch, step)``, and a checkpoint holds
the exact position, so a run killed at any point resumes to the same result as one never stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..data import prepare_data
from ..loop import evaluate, recalibrate_batchnorm
from ..params import param_roles
from ..runner import PhasedRun, PhaseSpec
from ..runtime import RunDir
from ..sparse import Phase, configure_phase, init_scores, overall_density, set_sparsity
from ..sparse.layers import set_kept_rule
from ..space import Genotype, Supernet, get_space
from .architect import Architect
from .config import SearchRunConfig
from ..deploy.defaults import DEFAULT_THREADS
from .cost import CostObjective, edge_op_costs, genotype_cost
from .latency import LatencyTable, edge_op_latencies
from .lower import LowerOptimizers
from .methods import EpochEnd, MethodPhase, SearchBatch, StepPosition, get_method

log = logging.getLogger(__name__)
PhasePlan = PhaseSpec  # a search's phases are the shared run phases


def phase_plan(config: SearchRunConfig) -> list[PhaseSpec]:
    s = config.search
    if s.mode == "single_loop":
        return [PhasePlan("single_loop", Phase.JOINT, s.single_loop_epochs)]
    return [PhasePlan("warmup", Phase.DENSE, s.epochs.warmup),
            PhasePlan("prune", Phase.JOINT if s.prune_weights else Phase.PRUNE, s.epochs.prune),
            PhasePlan("finetune", Phase.FINETUNE, s.epochs.finetune)]


@dataclass
class SearchResult:
    genotype: Genotype
    run_dir: Path
    model: Supernet


class DassSearch(PhasedRun):
    """One search run in its run directory. Build with :meth:`create` or :meth:`resume`."""

    kind = "search"
    config_class = SearchRunConfig
    config: SearchRunConfig

    def __init__(self, config: SearchRunConfig, run_dir: RunDir, progress: bool = True):
        super().__init__(config, run_dir, progress)
        s = config.search
        set_kept_rule(s.kept_rule)
        self.data = prepare_data(config.data, s.batch_size, config.seed, search=True)
        self.input_shape = self.data.input_shape
        self.method = get_method(s.method)(s)
        torch.manual_seed(config.seed)
        self.space = get_space(config.model.space)
        self.model: Supernet = self.space.build_supernet(config.model, self.data.in_channels, self.data.num_classes,
                                                         self.method.mixed_op).to(self.device)
        arch = param_roles(self.model).arch
        self.arch_optimizer = torch.optim.Adam(arch, lr=s.arch_lr, betas=(s.arch_beta1, s.arch_beta2),
                                               weight_decay=s.arch_weight_decay)
        self.architect = Architect(self.model, arch, self.arch_optimizer, s.order, s.unrolled_eps)
        self.method.attach(self.model, self.architect, self.space)
        self.plan = self.method.plan(phase_plan(config))   # a method may add phases (DARTS-PT's selection)
        self.lower: LowerOptimizers | None = None
        self.cost: CostObjective | None = None

    # -- PhasedRun hooks -------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        assert self.data.val is not None
        return min(len(self.data.train), len(self.data.val))

    def enter_phase(self, index: int, fresh: bool) -> None:
        plan = self.plan[index]
        s = self.config.search
        if plan.sparse:
            set_sparsity(self.model, self._ramped(s.sparsity) if plan.name == "prune" else s.sparsity,
                         s.mask_scope, s.budget)
            if fresh and plan.phase in (Phase.PRUNE, Phase.JOINT):
                init_scores(self.model)
        else:
            set_sparsity(self.model, 0.0)
        configure_phase(self.model, plan.phase)
        lower = s
        scale = plan.weight_lr_scale if isinstance(plan, MethodPhase) else 1.0
        if plan.name == "prune" and plan.phase == Phase.JOINT:
            scale *= s.prune_weight_lr_scale
        if scale != 1.0:
            lr = s.weight_lr * scale
            lower = replace(s, weight_lr=lr, weight_lr_min=min(s.weight_lr_min, lr))
        self.lower = LowerOptimizers(self.model, plan, lower)
        self.method.enter_phase()
        if s.cost_weight > 0:   # costs at the target sparsity (under a global threshold: the current masks)
            self.cost = CostObjective(self.model, self._costs(), s.cost_weight)
            self.architect.penalty = self.cost.penalty

    def _costs(self) -> dict[str, torch.Tensor]:
        s = self.config.search
        with self.method.measuring():
            if s.cost == "latency":   # seconds in the packed runtime on this machine (measured once, cached)
                return edge_op_latencies(self.model, self.input_shape, s.sparsity, LatencyTable(DEFAULT_THREADS))
            return edge_op_costs(self.model, self.input_shape, s.sparsity, s.mask_scope, s.budget)

    @property
    def _cost_unit(self) -> str:
        return "latency_ms" if self.config.search.cost == "latency" else "macs"

    @property
    def _cost_scale(self) -> float:
        return 1e3 if self.config.search.cost == "latency" else 1.0

    def set_epoch(self, epoch: int) -> dict[str, float]:
        assert self.lower is not None
        return self.lower.set_epoch(epoch)

    def batches(self, epoch_key: int, start: int):
        assert self.data.val is not None
        return zip(self.data.train.batches(epoch_key, start), self.data.val.batches(epoch_key, start))

    def _ramped(self, target: float) -> float:
        """The prune phase's sparsity now: a cubic ramp from 0 to ``target`` over ``search.prune_ramp`` of the
        phase (Zhu & Gupta's schedule), so the scores learn while the mask tightens; the target without a ramp."""
        ramp = self.config.search.prune_ramp
        if ramp <= 0:
            return target
        total = ramp * self.plan[self.position["phase"]].epochs * self.steps_per_epoch
        done = self.position["epoch"] * self.steps_per_epoch + self.position["step"]
        return target * (1.0 - (1.0 - min(done / max(total, 1.0), 1.0)) ** 3)

    def train_step(self, batch) -> None:
        (x_t, y_t), (x_v, y_v) = batch
        assert self.lower is not None
        p = self.position
        s = self.config.search
        if s.prune_ramp > 0 and self.plan[p["phase"]].name == "prune":
            set_sparsity(self.model, self._ramped(s.sparsity), s.mask_scope, s.budget)
        position = StepPosition(self.config.seed, p["phase"], p["epoch"], p["step"])
        self.accumulate(**self.method.step(SearchBatch(x_t, y_t, x_v, y_v), self.lower, position))

    def epoch_record(self, spec: PhaseSpec, lrs: dict[str, float]) -> dict:
        # the method acts first (DARTS-PT decides an edge here), so the record shows the state after it
        extra = self.method.end_epoch(EpochEnd(spec.name, self.position["epoch"], self.config.seed,
                                               lambda: self.data.evaluation.batches(0), self.device))
        record = {
            "train_loss": self.mean("train_loss"),
            "train_acc": self.mean("train_correct", "train_count"),
            "arch_val_loss": self.mean("arch_loss"),
            "lr": lrs,
            "density": overall_density(self.model),
        }
        if self.config.search.eval_val:
            if self.config.search.bn_recalibrate:   # running averages of the model as it is now, not as it was
                recalibrate_batchnorm(self.model, self.data.train.batches(self.epoch_key()), self.device,
                                      self.config.search.bn_recalibrate)
            record["val_loss"], record["val_acc"] = evaluate(self.model, self.data.evaluation.batches(0), self.device)
        if self.cost is not None:
            record[f"expected_cost_{self._cost_unit}"] = float(self.cost.expected().detach()) * self._cost_scale
        record["alphas"] = self.model.alpha_softmax()
        record["genotype"] = self.method.derive().to_dict()
        record.update(extra)
        self.history.append({"phase": spec.name, "epoch": self.position["epoch"] + 1, "alphas": record["alphas"]})
        log.info("%s epoch %d/%d train_loss %.4f val_acc %s", spec.name, self.position["epoch"] + 1, spec.epochs,
                 record["train_loss"], record.get("val_acc"))
        return record

    def extra_state(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "lower_optimizers": self.lower.state_dict() if self.lower else {},
        }
        method = self.method.state_dict()
        if method:   # only methods with a state of their own add it (the others' checkpoints are as they were)
            state["method"] = method
        return state

    def load_extra_state(self, state: dict, lower_phase: int) -> None:
        self.model.load_state_dict(state["model"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.method.load_state_dict(state.get("method", {}))

    def load_optimizer_state(self, state: dict) -> None:
        assert self.lower is not None
        self.lower.load_state_dict(state["lower_optimizers"])

    def finish(self) -> SearchResult:
        genotype = self.method.select()
        records = self.run_dir.log_records()
        meta = {
            "dataset": self.data.name,
            "space": self.config.model.space,
            "method": self.config.search.method,
            "sparsity": self.config.search.sparsity,
            "mask_scope": self.config.search.mask_scope,
            "mode": self.config.search.mode,
            "order": self.config.search.order,
            "init_channels": self.config.model.init_channels,
            "layers": self.config.model.layers,
            "seed": self.config.seed,
            "cost_weight": self.config.search.cost_weight,
        }
        if isinstance(genotype, Genotype):   # the cost models measure DARTS cells
            # per sample, the chosen ops in the supernet's cells at the target sparsity: nonzero multiply-adds, or
            # milliseconds in the packed runtime (search.cost=latency)
            meta[f"cost_{self._cost_unit}"] = self._cost_scale * genotype_cost(
                genotype, self._costs(), list(self.config.model.ops), self.config.model.nodes)
        if records and "val_acc" in records[-1]:
            meta["search_val_acc"] = records[-1]["val_acc"]
        genotype = replace(genotype, meta=meta)   # any space's genotype: a dataclass with ``meta``
        if self.world.main:
            genotype.save(self.run_dir.file("genotype.json"))
            from ..viz import draw_genotype, plot_alpha_history

            plot_alpha_history(self.history, list(self.config.model.ops), self.run_dir.file("alphas.png"))
            if isinstance(genotype, Genotype):
                draw_genotype(genotype, self.run_dir.file("cells.png"))
        return SearchResult(genotype, self.run_dir.path, self.model)


def search(config: SearchRunConfig, out: str | None = None, progress: bool = True,
           device: str | None = None, force: bool = False) -> SearchResult:
    """Run a DASS search from scratch (on ``device`` if given, else ``config.device``); the library twin of
    ``dass search``. A non-empty ``out`` is refused unless ``force`` (its contents are then moved aside)."""
    if device is not None:
        config = replace(config, device=device).validate()
    return DassSearch.create(config, out, progress, force).run()


def resume(run_dir: str | Path, progress: bool = True, device: str | None = None,
           threads: int | None = None) -> SearchResult:
    """Continue an interrupted search from its run directory (``dass search --resume``)."""
    return DassSearch.resume(run_dir, progress, device, threads).run()
