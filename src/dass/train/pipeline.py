"""Final training of a network (from a genotype or a baseline): dense pretrain, prune, fine-tune.

The prune phase is the pruner's (:mod:`dass.train.pruners`: ``hydra``, the paper's, or ``gmp``); the
fine-tune phase then trains the weights under the mask fixed at the target sparsity.

The run is a :class:`~dass.runner.PhasedRun`, so it resumes exactly like a search.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..data import prepare_data
from ..distributed.sync_bn import use_sync_batch_norm
from ..loop import cosine_lr, cosine_power_lr, evaluate, set_lr, sgd_step
from ..models import build_model
from ..params import param_roles
from ..runner import PhasedRun, PhaseSpec
from ..runtime import RunDir
from ..runtime.config import to_dict
from ..space.spaces import load_genotype
from ..sparse import Phase, configure_phase, overall_density, set_sparsity
from ..sparse.layers import set_kept_rule, sparse_layers
from ..sparse.serialize import save_sparse_model
from .config import TrainRunConfig
from .pruners import Pruner, get_pruner


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    test_acc: float


def build_network(config: TrainRunConfig, in_channels: int, num_classes: int, run_dir: Path | None = None) -> nn.Module:
    """The configured network; a genotype copied into the run directory wins over the original path."""
    m = config.model
    genotype = None
    if m.genotype:
        local = run_dir / "genotype.json" if run_dir is not None else None
        genotype = load_genotype(local if local is not None and local.is_file() else m.genotype)
    name = "genotype" if genotype is not None and m.name in ("darts_v2", "genotype") else m.name
    return build_model(name, num_classes, in_channels, width=m.width, genotype=genotype,
                       init_channels=m.init_channels, layers=m.layers, auxiliary=m.auxiliary, drop_path=m.drop_path,
                       stem=m.stem)


class TrainRun(PhasedRun):
    kind = "train"
    config_class = TrainRunConfig
    config: TrainRunConfig

    def __init__(self, config: TrainRunConfig, run_dir: RunDir, progress: bool = True):
        super().__init__(config, run_dir, progress)
        t = config.train
        set_kept_rule(t.kept_rule)   # how many weights a keep ratio keeps (round, or the authors' code's rule)
        self.data = prepare_data(config.data, t.batch_size, config.seed, search=False)
        self.input_shape = self.data.input_shape
        torch.manual_seed(config.seed)
        self.model = build_network(config, self.data.in_channels, self.data.num_classes, run_dir.path).to(self.device)
        if self.world.distributed:   # batch norm over the global batch, as one process would
            use_sync_batch_norm(self.model)
        self.pruner: Pruner = get_pruner(t.pruner)(self.model, t.sparsity, t.mask_scope, t.gmp_updates)
        self.plan = [PhaseSpec("pretrain", Phase.DENSE, t.epochs.pretrain),
                     PhaseSpec("prune", self.pruner.phase, t.epochs.prune),
                     PhaseSpec("finetune", Phase.FINETUNE, t.epochs.finetune)]
        self.optimizer: torch.optim.SGD | None = None
        self.params: list[nn.Parameter] = []

    def on_create(self) -> None:
        if self.config.model.genotype:  # keep the run self-contained
            getattr(self.model, "genotype").save(self.run_dir.file("genotype.json"))

    # -- PhasedRun hooks ---------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train)

    PRUNE = 1   # the index of the prune phase in the plan

    def enter_phase(self, index: int, fresh: bool) -> None:
        spec, t = self.plan[index], self.config.train
        if spec.phase is Phase.DENSE:
            set_sparsity(self.model, 0.0)
        elif index == self.PRUNE:
            self.pruner.start(fresh, spec.epochs * self.steps_per_epoch)
        else:
            set_sparsity(self.model, t.sparsity, t.mask_scope)
        configure_phase(self.model, spec.phase)
        roles = param_roles(self.model)
        # HYDRA: while the scores train, so do the parameters outside the sparse layers (batch norm)
        self.params = roles.scores + roles.other if spec.phase is Phase.PRUNE else roles.weights
        lr = getattr(t.lr, spec.name)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                         nesterov=t.nesterov)

    def set_epoch(self, epoch: int) -> dict[str, float]:
        spec, t = self.plan[self.position["phase"]], self.config.train
        base = getattr(t.lr, spec.name)
        if t.lr_schedule == "cosine_power":
            lr = cosine_power_lr(base, t.lr_min, epoch, spec.epochs, t.lr_power)
        else:
            lr = cosine_lr(base, t.lr_min, epoch, spec.epochs)
        assert self.optimizer is not None
        set_lr(self.optimizer, lr)
        if hasattr(self.model, "drop_path_prob"):
            self.model.drop_path_prob = self.config.model.drop_path * epoch / max(spec.epochs, 1)
        return {"lr": lr}

    def batches(self, epoch_key: int, start: int):
        return self.data.train.batches(epoch_key, start)

    def train_step(self, batch) -> None:
        x, y = batch
        t = self.config.train
        if self.position["phase"] == self.PRUNE:
            self.pruner.before_step(self.position["epoch"] * self.steps_per_epoch + self.position["step"])
        assert self.optimizer is not None
        loss, correct = sgd_step(self.model, self.params, self.optimizer, x, y, t.grad_clip, t.label_smoothing,
                                 t.aux_weight)
        self.accumulate(train_loss=loss, train_correct=correct, train_count=len(y))

    def epoch_record(self, spec: PhaseSpec, lrs: dict[str, float]) -> dict:
        test_loss, test_acc = evaluate(self.model, self.data.evaluation.batches(0), self.device)
        return {"train_loss": self.mean("train_loss"), "train_acc": self.mean("train_correct", "train_count"),
                "test_loss": test_loss, "test_acc": test_acc, "density": overall_density(self.model), **lrs}

    def extra_state(self) -> dict:
        keep = {name: layer.keep_ratio for name, layer in sparse_layers(self.model)}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else {},
                "keep_ratios": keep}

    def load_extra_state(self, state: dict, lower_phase: int) -> None:
        self.model.load_state_dict(state["model"])

    def load_optimizer_state(self, state: dict) -> None:
        assert self.optimizer is not None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.position["phase"] == self.PRUNE:  # the schedule's current sparsity
            self.pruner.resume(state["keep_ratios"])

    def finish(self) -> TrainResult:
        records = self.run_dir.log_records()
        if self.world.main:
            save_sparse_model(self.model, self.run_dir.file("model_sparse.pt"),
                              {"config": to_dict(self.config), "input_shape": list(self.input_shape),
                               "normalization": {"mean": self.data.normalization.mean.tolist(),
                                                 "std": self.data.normalization.std.tolist()}})
        return TrainResult(self.run_dir.path, self.model, records[-1]["test_acc"] if records else float("nan"))


def train(config: TrainRunConfig, out: str | None = None, progress: bool = True,
          device: str | None = None, force: bool = False) -> TrainResult:
    """Train, prune and fine-tune a network (on ``device`` if given, else ``config.device``); the library twin of
    ``dass train``. A non-empty ``out`` is refused unless ``force`` (its contents are then moved aside)."""
    if device is not None:
        config = replace(config, device=device).validate()
    return TrainRun.create(config, out, progress, force).run()
