"""Final training of a network (from a genotype or a baseline): dense pretrain, prune, fine-tune.

Two pruners:

* ``hydra`` (the paper's): scores initialised from the scaled weight magnitudes, trained at the
  target sparsity with the weights frozen, then the mask is fixed and the weights fine-tuned;
* ``gmp`` (Zhu & Gupta 2017) for comparison: the weights keep training while the sparsity rises
  along ``s_t = s_f * (1 - (1 - t/T)^3)``, the mask being re-derived from the weight magnitudes
  at ``gmp_updates`` evenly spaced steps of the prune phase; then fine-tuning with the mask fixed.

The run is a :class:`~dass.runner.PhasedRun`, so it resumes exactly like a search.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import AugmentConfig, Normalization, TensorBatches, load_dataset
from ..loop import cosine_lr, evaluate, set_lr, sgd_step
from ..models import build_model
from ..runner import PhasedRun, PhaseSpec
from ..runtime import RunDir
from ..runtime.config import to_dict
from ..space.genotype import Genotype
from ..sparse import Phase, configure_phase, init_scores, overall_density, score_parameters, set_sparsity
from ..sparse.layers import sparse_layers
from .config import TrainRunConfig
from ..sparse.serialize import save_sparse_model


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
        genotype = Genotype.load(local if local is not None and local.is_file() else m.genotype)
    name = "genotype" if genotype is not None and m.name in ("darts_v2", "genotype") else m.name
    return build_model(name, num_classes, in_channels, width=m.width, genotype=genotype,
                       init_channels=m.init_channels, layers=m.layers, auxiliary=m.auxiliary, drop_path=m.drop_path)


class TrainRun(PhasedRun):
    kind = "train"
    config_class = TrainRunConfig
    config: TrainRunConfig

    def __init__(self, config: TrainRunConfig, run_dir: RunDir, progress: bool = True):
        super().__init__(config, run_dir, progress)
        d, t = config.data, config.train
        dataset = load_dataset(d.dataset, d.data_dir, d.download).subset(d.subset)
        self.dataset_name = dataset.name
        self.input_shape = (dataset.in_channels, *dataset.image_size)
        norm = self.normalization = Normalization.fit(dataset.x_train)
        aug = AugmentConfig(d.crop_padding, d.flip, d.cutout)
        self.train_batches = TensorBatches(norm(dataset.x_train), torch.from_numpy(dataset.y_train), t.batch_size,
                                           config.seed, stream=1, augment_config=aug)
        self.test_batches = TensorBatches(norm(dataset.x_test), torch.from_numpy(dataset.y_test), 256,
                                          config.seed, stream=2, shuffle=False)
        torch.manual_seed(config.seed)
        self.model = build_network(config, dataset.in_channels, dataset.num_classes, run_dir.path)
        self.plan = [PhaseSpec("pretrain", Phase.DENSE, t.epochs.pretrain),
                     PhaseSpec("prune", Phase.PRUNE if t.pruner == "hydra" else Phase.FINETUNE, t.epochs.prune),
                     PhaseSpec("finetune", Phase.FINETUNE, t.epochs.finetune)]
        self.optimizer: torch.optim.SGD | None = None
        self.params: list[nn.Parameter] = []

    def on_create(self) -> None:
        if self.config.model.genotype:  # keep the run self-contained
            getattr(self.model, "genotype").save(self.run_dir.file("genotype.json"))

    # -- PhasedRun hooks ---------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)

    def _gmp(self, index: int) -> bool:
        return self.config.train.pruner == "gmp" and self.plan[index].name == "prune"

    def enter_phase(self, index: int, fresh: bool) -> None:
        spec, t = self.plan[index], self.config.train
        if spec.phase is Phase.DENSE:
            set_sparsity(self.model, 0.0)
        elif self._gmp(index):
            pass  # the sparsity follows the schedule, set at every mask update (and restored with the scores)
        else:
            set_sparsity(self.model, t.sparsity, t.mask_scope)
            if fresh and spec.phase is Phase.PRUNE:
                init_scores(self.model)
        if self._gmp(index) and fresh:
            self._gmp_update(0)
        configure_phase(self.model, spec.phase)
        sparse_ids = {id(p) for _, l in sparse_layers(self.model) for p in (l.weight, l.bias) if p is not None}
        others = [p for n, p in self.model.named_parameters() if not n.endswith("scores") and id(p) not in sparse_ids]
        if spec.phase is Phase.PRUNE:
            self.params = score_parameters(self.model) + others
        else:
            self.params = [p for n, p in self.model.named_parameters() if not n.endswith("scores")]
        lr = getattr(t.lr, spec.name)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)

    def _gmp_sparsity(self, step: int) -> float:
        """Zhu & Gupta's cubic ramp from 0 to the target over the prune phase, in ``gmp_updates`` stairs."""
        t = self.config.train
        total = max(self.plan[1].epochs * self.steps_per_epoch, 1)
        every = max(total // t.gmp_updates, 1)
        progress = min((step // every + 1) * every / total, 1.0)
        return t.sparsity * (1.0 - (1.0 - progress) ** 3)

    @torch.no_grad()
    def _gmp_update(self, step: int) -> None:
        for _, layer in sparse_layers(self.model):
            layer.init_scores_from_weights()  # scores = scaled |W|: the mask is magnitude pruning
        set_sparsity(self.model, self._gmp_sparsity(step), self.config.train.mask_scope)

    def set_epoch(self, epoch: int) -> dict[str, float]:
        spec, t = self.plan[self.position["phase"]], self.config.train
        lr = cosine_lr(getattr(t.lr, spec.name), t.lr_min, epoch, spec.epochs)
        assert self.optimizer is not None
        set_lr(self.optimizer, lr)
        if hasattr(self.model, "drop_path_prob"):
            self.model.drop_path_prob = self.config.model.drop_path * epoch / max(spec.epochs, 1)
        return {"lr": lr}

    def batches(self, epoch_key: int, start: int):
        return self.train_batches.batches(epoch_key, start)

    def train_step(self, batch) -> None:
        x, y = batch
        t = self.config.train
        index = self.position["phase"]
        if self._gmp(index):
            step = self.position["epoch"] * self.steps_per_epoch + self.position["step"]
            total = max(self.plan[1].epochs * self.steps_per_epoch, 1)
            if step > 0 and step % max(total // t.gmp_updates, 1) == 0:
                self._gmp_update(step)
        assert self.optimizer is not None
        loss, correct = sgd_step(self.model, self.params, self.optimizer, x, y, t.grad_clip, t.label_smoothing,
                                 t.aux_weight)
        self.accumulate(train_loss=loss, train_correct=correct, train_count=len(y))

    def epoch_record(self, spec: PhaseSpec, lrs: dict[str, float]) -> dict:
        test_loss, test_acc = evaluate(self.model, self.test_batches.batches(0))
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
        if self._gmp(self.position["phase"]):  # the schedule's current sparsity
            set_sparsity(self.model, 1.0 - min(state["keep_ratios"].values()), self.config.train.mask_scope)

    def finish(self) -> TrainResult:
        records = self.run_dir.log_records()
        save_sparse_model(self.model, self.run_dir.file("model_sparse.pt"),
                          {"config": to_dict(self.config), "input_shape": list(self.input_shape),
                           "normalization": {"mean": self.normalization.mean.tolist(),
                                             "std": self.normalization.std.tolist()}})
        return TrainResult(self.run_dir.path, self.model, records[-1]["test_acc"] if records else float("nan"))


def train(config: TrainRunConfig, out: str | None = None, progress: bool = True) -> TrainResult:
    """Train, prune and fine-tune a network; the library twin of ``dass train``."""
    return TrainRun.create(config, out, progress).run()
