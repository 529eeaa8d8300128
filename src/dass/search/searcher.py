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
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import AugmentConfig, Normalization, TensorBatches, load_dataset, split_train_val
from ..loop import cosine_lr, evaluate, set_lr, sgd_step
from ..runner import PhasedRun, PhaseSpec
from ..runtime import RunDir
from ..sparse import Phase, configure_phase, init_scores, overall_density, set_sparsity
from ..sparse.layers import sparse_layers
from ..space import Genotype, Supernet, SupernetConfig
from .cost import CostObjective, edge_op_costs, genotype_cost
from .architect import Architect, LowerLevel
from .config import SearchRunConfig

log = logging.getLogger(__name__)
PhasePlan = PhaseSpec  # a search's phases are the shared run phases


def phase_plan(config: SearchRunConfig) -> list[PhaseSpec]:
    s = config.search
    if s.mode == "single_loop":
        return [PhasePlan("single_loop", Phase.JOINT, s.single_loop_epochs)]
    return [PhasePlan("warmup", Phase.DENSE, s.epochs.warmup),
            PhasePlan("prune", Phase.PRUNE, s.epochs.prune),
            PhasePlan("finetune", Phase.FINETUNE, s.epochs.finetune)]


@dataclass
class SearchResult:
    genotype: Genotype
    run_dir: Path
    model: Supernet


class _LowerOptimizers:
    """The lower-level optimizers of one phase: weights, scores, or both (single loop)."""

    def __init__(self, model: Supernet, plan: PhaseSpec, config: SearchRunConfig):
        s = config.search
        sparse_params = {id(p) for _, layer in sparse_layers(model) for p in (layer.weight, layer.bias) if p is not None}
        trainable_weights = [p for p in model.weight_parameters() if p.requires_grad]
        self.groups: dict[str, tuple[list[torch.nn.Parameter], torch.optim.SGD, float, float]] = {}
        if plan.phase in (Phase.DENSE, Phase.FINETUNE, Phase.JOINT):
            opt = torch.optim.SGD(trainable_weights, lr=s.weight_lr, momentum=s.weight_momentum,
                                  weight_decay=s.weight_decay)
            self.groups["weights"] = (trainable_weights, opt, s.weight_lr, s.weight_lr_min)
        if plan.phase in (Phase.PRUNE, Phase.JOINT):
            scores = [layer.scores for _, layer in sparse_layers(model)]
            # HYDRA: while pruning, the scores train and so do the parameters outside the sparse layers.
            extra = [p for p in trainable_weights if id(p) not in sparse_params] if plan.phase is Phase.PRUNE else []
            params = scores + extra
            opt = torch.optim.SGD(params, lr=s.score_lr, momentum=s.score_momentum, weight_decay=s.score_weight_decay)
            self.groups["scores"] = (params, opt, s.score_lr, s.score_lr_min)
        self.epochs = plan.epochs

    def set_epoch(self, epoch: int) -> dict[str, float]:
        lrs = {}
        for name, (_, opt, base, minimum) in self.groups.items():
            lrs[name] = cosine_lr(base, minimum, epoch, self.epochs)
            set_lr(opt, lrs[name])
        return lrs

    def primary(self) -> LowerLevel:
        """The variables the architect unrolls over: the weights where they train, else the scores."""
        params, opt, _, _ = self.groups.get("weights") or self.groups["scores"]
        return LowerLevel(params, opt)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, (_, opt, _, _) in self.groups.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, (_, opt, _, _) in self.groups.items():
            opt.load_state_dict(state[name])


class DassSearch(PhasedRun):
    """One search run in its run directory. Build with :meth:`create` or :meth:`resume`."""

    kind = "search"
    config_class = SearchRunConfig
    config: SearchRunConfig

    def __init__(self, config: SearchRunConfig, run_dir: RunDir, progress: bool = True):
        super().__init__(config, run_dir, progress)
        self._setup_data()
        torch.manual_seed(config.seed)
        m = config.model
        self.model = Supernet(SupernetConfig(m.init_channels, m.layers, m.nodes, m.multiplier, m.stem_multiplier,
                                             list(m.ops), self.in_channels, self.num_classes,
                                             m.partial_channels))
        s = config.search
        self.arch_optimizer = torch.optim.Adam(self.model.arch_parameters(), lr=s.arch_lr,
                                               betas=(s.arch_beta1, s.arch_beta2), weight_decay=s.arch_weight_decay)
        self.architect = Architect(self.model, self.model.arch_parameters(), self.arch_optimizer, s.order,
                                   s.unrolled_eps)
        self.plan = phase_plan(config)
        self.lower: _LowerOptimizers | None = None
        self.cost: CostObjective | None = None

    def _setup_data(self) -> None:
        d, s = self.config.data, self.config.search
        dataset = load_dataset(d.dataset, d.data_dir, d.download).subset(d.subset)
        self.dataset_name = dataset.name
        self.in_channels, self.num_classes = dataset.in_channels, dataset.num_classes
        _, h, w, c = dataset.x_train.shape   # images are N x H x W x C
        self.input_shape = (int(c), int(h), int(w))
        train_idx, val_idx = split_train_val(len(dataset.x_train), d.val_fraction, self.config.seed)
        norm = Normalization.fit(dataset.x_train[train_idx])
        x_all, y_all = norm(dataset.x_train), torch.from_numpy(dataset.y_train)
        t_idx, v_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        aug = AugmentConfig(d.crop_padding, d.flip, d.cutout)
        seed = self.config.seed
        self.train_batches = TensorBatches(x_all[t_idx], y_all[t_idx], s.batch_size, seed, stream=1, augment_config=aug)
        self.val_batches = TensorBatches(x_all[v_idx], y_all[v_idx], s.batch_size, seed, stream=2, augment_config=aug)
        self.val_eval = TensorBatches(x_all[v_idx], y_all[v_idx], max(s.batch_size, 256), seed, stream=3, shuffle=False)

    # -- PhasedRun hooks -------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return min(len(self.train_batches), len(self.val_batches))

    def enter_phase(self, index: int, fresh: bool) -> None:
        plan = self.plan[index]
        s = self.config.search
        if plan.sparse:
            set_sparsity(self.model, s.sparsity, s.mask_scope)
            if fresh and plan.phase in (Phase.PRUNE, Phase.JOINT):
                init_scores(self.model)
        else:
            set_sparsity(self.model, 0.0)
        configure_phase(self.model, plan.phase)
        self.lower = _LowerOptimizers(self.model, plan, self.config)
        if s.path_sampling == "proxyless":
            self.model.sampler.mode = "argmax"
        if s.cost_weight > 0:   # costs at the target sparsity (under a global threshold: the current masks)
            self.cost = CostObjective(self.model, self._costs(), s.cost_weight)
            self.architect.penalty = self.cost.penalty

    def _costs(self) -> dict[str, torch.Tensor]:
        s = self.config.search
        return edge_op_costs(self.model, self.input_shape, s.sparsity, s.mask_scope)

    def set_epoch(self, epoch: int) -> dict[str, float]:
        assert self.lower is not None
        return self.lower.set_epoch(epoch)

    def batches(self, epoch_key: int, start: int):
        return zip(self.train_batches.batches(epoch_key, start), self.val_batches.batches(epoch_key, start))

    def train_step(self, batch) -> None:
        (x_t, y_t), (x_v, y_v) = batch
        assert self.lower is not None
        s = self.config.search
        sampler = self.model.sampler
        if s.path_sampling == "proxyless":   # paths drawn from a generator keyed by the step: resume stays exact
            p = self.position
            sampler.generator = torch.Generator().manual_seed(
                self.config.seed * 1_000_003 + p["phase"] * 100_003 + p["epoch"] * 10_007 + p["step"])
            sampler.mode = "arch"
        arch_loss = self.architect.step(x_t, y_t, x_v, y_v, self.lower.primary())
        if s.path_sampling == "proxyless":
            sampler.mode = "weights"
        loss = correct = 0
        for params, opt, _, _ in self.lower.groups.values():
            loss, correct = sgd_step(self.model, params, opt, x_t, y_t, s.grad_clip)
        if s.path_sampling == "proxyless":
            sampler.mode = "argmax"   # evaluation between steps uses the most likely paths
        self.accumulate(arch_loss=arch_loss, train_loss=loss, train_correct=correct, train_count=len(y_t))

    def epoch_record(self, spec: PhaseSpec, lrs: dict[str, float]) -> dict:
        record = {
            "train_loss": self.mean("train_loss"),
            "train_acc": self.mean("train_correct", "train_count"),
            "arch_val_loss": self.mean("arch_loss"),
            "lr": lrs,
            "density": overall_density(self.model),
        }
        if self.config.search.eval_val:
            record["val_loss"], record["val_acc"] = evaluate(self.model, self.val_eval.batches(0))
        if self.cost is not None:
            record["expected_cost_macs"] = float(self.cost.expected())
        record["alphas"] = self.model.alpha_softmax()
        record["genotype"] = self.model.genotype().to_dict()
        self.history.append({"phase": spec.name, "epoch": self.position["epoch"] + 1, "alphas": record["alphas"]})
        log.info("%s epoch %d/%d train_loss %.4f val_acc %s", spec.name, self.position["epoch"] + 1, spec.epochs,
                 record["train_loss"], record.get("val_acc"))
        return record

    def extra_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "lower_optimizers": self.lower.state_dict() if self.lower else {},
        }

    def load_extra_state(self, state: dict, lower_phase: int) -> None:
        self.model.load_state_dict(state["model"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])

    def load_optimizer_state(self, state: dict) -> None:
        assert self.lower is not None
        self.lower.load_state_dict(state["lower_optimizers"])

    def finish(self) -> SearchResult:
        genotype = self.model.genotype()
        records = self.run_dir.log_records()
        meta = {
            "dataset": self.dataset_name,
            "sparsity": self.config.search.sparsity,
            "mask_scope": self.config.search.mask_scope,
            "mode": self.config.search.mode,
            "order": self.config.search.order,
            "init_channels": self.config.model.init_channels,
            "layers": self.config.model.layers,
            "seed": self.config.seed,
            "cost_weight": self.config.search.cost_weight,
            # nonzero multiply-adds per sample of the chosen ops in the supernet's cells, at the target sparsity
            "cost_macs": genotype_cost(genotype, self._costs(), list(self.config.model.ops), self.config.model.nodes),
        }
        if records and "val_acc" in records[-1]:
            meta["search_val_acc"] = records[-1]["val_acc"]
        genotype = Genotype(genotype.normal, genotype.normal_concat, genotype.reduce, genotype.reduce_concat, meta)
        genotype.save(self.run_dir.file("genotype.json"))
        from ..viz import draw_genotype, plot_alpha_history

        plot_alpha_history(self.history, list(self.config.model.ops), self.run_dir.file("alphas.png"))
        draw_genotype(genotype, self.run_dir.file("cells.png"))
        return SearchResult(genotype, self.run_dir.path, self.model)


def search(config: SearchRunConfig, out: str | None = None, progress: bool = True) -> SearchResult:
    """Run a DASS search from scratch; the library twin of ``dass search``."""
    return DassSearch.create(config, out, progress).run()


def resume(run_dir: str | Path, progress: bool = True) -> SearchResult:
    """Continue an interrupted search from its run directory (``dass search --resume``)."""
    return DassSearch.resume(run_dir, progress).run()
