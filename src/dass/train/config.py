"""The final-training run's configuration: every option `dass train` understands, with its default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import DassError
from ..loop import LR_SCHEDULES
from ..runtime.config import check_all, layered, resolve_preset
from ..runtime.options import RunOptions
from ..space.genotype import KNOWN_GENOTYPES
from ..space.network import IMAGENET_SIZE, SIZES, STEMS
from ..sparse.layers import KEPT_RULES
from .pruners import available_pruners


@dataclass
class NetConfig:
    name: str = "darts_v2"            # a baseline (dass.models.model_names()) | darts_v1 | darts_v2 | genotype
    genotype: Optional[str] = None    # genotype.json for name=genotype (set by --genotype)
    size: Optional[str] = None        # tiny | small | medium | large: the paper's (channels, cells)
    init_channels: int = 36
    layers: int = 20
    width: float = 1.0                # channel multiplier of the hand-designed baselines
    auxiliary: bool = False
    drop_path: float = 0.0
    stem: str = "cifar"               # cifar | imagenet: DARTS's ImageNet network (cells at 1/8 resolution)


@dataclass
class TrainEpochs:
    pretrain: int = 200
    prune: int = 200
    finetune: int = 200


@dataclass
class PhaseLR:
    pretrain: float = 0.05
    prune: float = 0.1
    finetune: float = 0.01


@dataclass
class TrainConfig:
    sparsity: float = 0.9
    mask_scope: str = "layer"         # layer | global
    pruner: str = "hydra"             # hydra: learned scores | gmp: gradual magnitude pruning (Zhu & Gupta)
    epochs: TrainEpochs = field(default_factory=TrainEpochs)
    lr: PhaseLR = field(default_factory=PhaseLR)
    lr_min: float = 0.0
    lr_schedule: str = "cosine"       # per phase: cosine | cosine_power (sharpDARTS' cosine power annealing)
    lr_power: float = 2.0             # cosine_power: the power (>= 1; 1 is cosine; sharpDARTS' scripts use 2)
    batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = False            # Nesterov momentum (NAS-Bench-201's protocol)
    weight_decay: float = 4e-4
    label_smoothing: float = 0.0
    aux_weight: float = 0.4
    grad_clip: float = 5.0
    gmp_updates: int = 10             # gmp: number of mask updates spread over the prune phase
    kept_rule: str = "round"          # weights a layer keeps at keep ratio k: round(k*n) | authors: n - int((1-k)*n)


@dataclass
class TrainRunConfig(RunOptions):
    model: NetConfig = field(default_factory=NetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "TrainRunConfig":
        t, m = self.train, self.model
        if not 0.0 < t.sparsity < 1.0:
            raise DassError(f"sparsity must be in (0, 1) (0.9 keeps 10% of the weights), got {t.sparsity}")
        checks = [
            (t.mask_scope in ("layer", "global"), f"train.mask_scope must be layer or global, got {t.mask_scope!r}"),
            (t.pruner in available_pruners(),
             f"train.pruner must be one of {', '.join(available_pruners())}, got {t.pruner!r}"),
            (t.batch_size >= 1, "train.batch_size must be at least 1"),
            (min(t.epochs.pretrain, t.epochs.prune, t.epochs.finetune) >= 0, "epochs must not be negative"),
            (t.epochs.pretrain + t.epochs.prune + t.epochs.finetune > 0, "all phase epochs are 0: nothing to train"),
            (min(t.lr.pretrain, t.lr.prune, t.lr.finetune) > 0, "learning rates must be positive"),
            (0.0 <= t.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1)"),
            (0.0 <= m.drop_path < 1.0, "model.drop_path must be in [0, 1)"),
            (m.size is None or m.size in SIZES, f"model.size must be one of {', '.join(SIZES)}, got {m.size!r}"),
            (m.stem in STEMS, f"model.stem must be one of {', '.join(STEMS)}, got {m.stem!r}"),
            (m.width > 0 and m.init_channels >= 1 and m.layers >= 1, "model sizes must be positive"),
            (t.gmp_updates >= 1, "train.gmp_updates must be at least 1"),
            (t.kept_rule in KEPT_RULES, f"train.kept_rule must be one of {', '.join(KEPT_RULES)}, got {t.kept_rule!r}"),
            (0 <= t.momentum < 1, f"train.momentum must be in [0, 1), got {t.momentum}"),
            (not t.nesterov or t.momentum > 0, "train.nesterov needs train.momentum > 0"),
            (t.weight_decay >= 0 and t.lr_min >= 0, "train.weight_decay and train.lr_min must not be negative"),
            (t.lr_schedule in LR_SCHEDULES,
             f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {t.lr_schedule!r}"),
            (t.lr_power >= 1, f"train.lr_power must be at least 1 (1 is cosine), got {t.lr_power}"),
            (t.grad_clip > 0, f"train.grad_clip must be positive, got {t.grad_clip}"),
            (t.aux_weight >= 0, f"train.aux_weight must not be negative, got {t.aux_weight}"),
            (self.data.subset is None or self.data.subset >= 2, "--subset must be at least 2 images"),
        ]
        check_all(checks)
        self.validate_run()
        if m.name == "genotype" and not m.genotype:
            raise DassError("model genotype needs --genotype FILE (a genotype.json from `dass search`)")
        if m.size:
            m.init_channels, m.layers = SIZES[m.size]
        if m.stem == "imagenet":
            cell_models = [name.lower() for name in KNOWN_GENOTYPES] + ["genotype"]
            if m.name.lower() not in cell_models:
                raise DassError(f"model.stem=imagenet builds DARTS's ImageNet network from cells: use it with "
                                f"--model {' / '.join(cell_models)} (or --genotype FILE), not {m.name!r}")
            if m.init_channels % 2:
                raise DassError(f"model.stem=imagenet needs an even model.init_channels, got {m.init_channels} "
                                f"(DARTS's ImageNet network: {IMAGENET_SIZE[0]} channels, {IMAGENET_SIZE[1]} cells)")
        return self


def make_train_config(preset: str | None = "train-default", overrides: dict | None = None,
                      sets: list[str] | None = None) -> TrainRunConfig:
    """Defaults, then the preset or YAML file, then flag overrides, then ``--set`` items, validated."""
    return layered(TrainRunConfig, resolve_preset(preset) if preset else None, overrides, sets)
