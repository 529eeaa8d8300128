"""The search run's configuration: every option `dass search` understands, with its default."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DassError
from ..loop import LR_SCHEDULES
from ..runtime.config import check_all, layered, resolve_preset
from ..runtime.options import RunOptions
from ..space import PRIMITIVES, get_space
from ..space.genotype import MAX_NODES
from ..sparse.layers import KEPT_RULES
from ..sparse.phases import BUDGETS
from .methods import get_method
from .methods.darts_pt import DartsPTConfig


@dataclass
class ModelConfig:
    space: str = "darts"              # the search space (dass.space.available_spaces())
    init_channels: int = 16
    layers: int = 8
    nodes: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    ops: list[str] = field(default_factory=lambda: list(PRIMITIVES))
    partial_channels: int = 1         # PC-DARTS: K > 1 runs the ops on 1/K of the channels (memory-light)


@dataclass
class PhaseEpochs:
    warmup: int = 100
    prune: int = 50
    finetune: int = 100


@dataclass
class SearchConfig:
    method: str = "darts"             # the search method (dass.search.methods.available_methods())
    mode: str = "three_phase"         # three_phase | single_loop
    sparsity: float = 0.9             # fraction of weights removed in every sparse layer
    mask_scope: str = "layer"         # layer: top-k per layer | global: one threshold for all layers
    budget: str = "uniform"           # per-layer keep ratios: uniform | erk (Erdos-Renyi-Kernel: small layers keep
                                      # more); mask_scope=global has one threshold instead and ignores it
    prune_ramp: float = 0.0           # > 0: sparsity ramps 0 -> target (cubic) over this fraction of the prune phase
    prune_weights: bool = False       # the weights train beside the scores in the prune phase (HYDRA: scores only)
    prune_weight_lr_scale: float = 1.0  # with prune_weights: the weights' lr in the prune phase, times weight_lr
    bn_recalibrate: int = 0           # > 0: re-estimate batch-norm statistics on this many training batches before
                                      # each evaluation (stale running averages misjudge a freshly masked supernet)
    kept_rule: str = "round"          # round: round(k*n) weights kept | authors: n - int((1-k)*n), as their code
    order: int = 2                    # architecture step: 1 first order, 2 second order (unrolled)
    batch_size: int = 64
    epochs: PhaseEpochs = field(default_factory=PhaseEpochs)
    single_loop_epochs: int = 50
    weight_lr: float = 0.025
    weight_lr_min: float = 0.001
    weight_momentum: float = 0.9
    weight_decay: float = 3e-4
    score_lr: float = 0.1
    score_lr_min: float = 0.0
    score_momentum: float = 0.9
    score_weight_decay: float = 1e-4
    arch_lr: float = 3e-4
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    grad_clip: float = 5.0
    unrolled_eps: float = 0.01
    eval_val: bool = True             # full pass over the val split at each epoch end
    path_sampling: str = "all"        # deprecated: proxyless is search.method=proxyless
    cost_weight: float = 0.0          # > 0: add cost_weight * expected cost / uniform-alpha cost to the arch loss
    cost: str = "macs"                # macs: nonzero multiply-adds | latency: measured time in the packed runtime
    lr_schedule: str = "cosine"       # lower-level lr per phase: cosine | cosine_power (sharpDARTS, dass.loop)
    lr_power: float = 2.0             # cosine_power: the power (>= 1; 1 is cosine; sharpDARTS' scripts use 2)
    rarts_lambda: float = 1.0         # rarts: weight of the training-split loss in the architecture gradient
    rarts_beta: float = 1.0           # rarts: coupling (beta/2)||w - y||^2 of the train and val networks; 0 decouples
    sd_lambda: float = 1.0            # sd-darts: weight of the distillation term (0: plain darts)
    sd_teachers: int = 2              # sd-darts: how many earlier-step supernets vote (K)
    sd_temperature: float = 1.0       # sd-darts: softmax temperature of the distillation term
    darts_pt: DartsPTConfig = field(default_factory=DartsPTConfig)   # darts-pt selection options


@dataclass
class SearchRunConfig(RunOptions):
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def validate(self) -> "SearchRunConfig":
        s, m, d = self.search, self.model, self.data
        if not 0.0 < s.sparsity < 1.0:
            raise DassError(f"sparsity must be in (0, 1) (0.9 keeps 10% of the weights), got {s.sparsity}")
        checks = [
            (s.mode in ("three_phase", "single_loop"), f"search.mode must be three_phase or single_loop, got {s.mode!r}"),
            (s.mask_scope in ("layer", "global"), f"search.mask_scope must be layer or global, got {s.mask_scope!r}"),
            (s.budget in BUDGETS, f"search.budget must be one of {', '.join(BUDGETS)}, got {s.budget!r}"),
            (0.0 <= s.prune_ramp <= 1.0, f"search.prune_ramp must be in [0, 1] (a fraction of the prune phase), got "
                                         f"{s.prune_ramp}"),
            (s.prune_weight_lr_scale > 0, f"search.prune_weight_lr_scale must be > 0, got {s.prune_weight_lr_scale}"),
            (s.bn_recalibrate >= 0, f"search.bn_recalibrate must not be negative, got {s.bn_recalibrate}"),
            (s.kept_rule in KEPT_RULES, f"search.kept_rule must be one of {', '.join(KEPT_RULES)}, got {s.kept_rule!r}"),
            (s.order in (1, 2), f"search.order must be 1 or 2, got {s.order}"),
            (s.batch_size >= 1, f"search.batch_size must be at least 1, got {s.batch_size}"),
            (min(s.epochs.warmup, s.epochs.prune, s.epochs.finetune, s.single_loop_epochs) >= 0,
             "epochs must not be negative"),
            (min(s.weight_lr, s.score_lr, s.arch_lr) > 0, "learning rates must be positive"),
            (0 < d.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {d.val_fraction}"),
            (d.subset is None or d.subset >= 4, f"--subset must be at least 4 images, got {d.subset}"),
            (m.init_channels >= 1 and m.layers >= 1 and m.nodes >= 1, "model sizes must be positive"),
            (m.nodes <= MAX_NODES, f"model.nodes must be at most {MAX_NODES} (a genotype's limit), got {m.nodes}"),
            (1 <= m.multiplier <= m.nodes, f"model.multiplier must be in 1..nodes ({m.nodes}), got {m.multiplier}"),
            (s.grad_clip > 0, "search.grad_clip must be positive"),
            (0 <= s.arch_beta1 < 1 and 0 <= s.arch_beta2 < 1,
             f"search.arch_beta1 and arch_beta2 must be in [0, 1), got {s.arch_beta1} and {s.arch_beta2}"),
            (0 <= s.weight_momentum < 1 and 0 <= s.score_momentum < 1,
             f"search.weight_momentum and score_momentum must be in [0, 1), got {s.weight_momentum} and "
             f"{s.score_momentum}"),
            (min(s.weight_decay, s.score_weight_decay, s.arch_weight_decay) >= 0, "weight decays must not be negative"),
            (0 <= s.weight_lr_min <= s.weight_lr and 0 <= s.score_lr_min <= s.score_lr,
             "search.weight_lr_min / score_lr_min must be in [0, the learning rate]"),
            (s.unrolled_eps > 0, f"search.unrolled_eps must be positive, got {s.unrolled_eps}"),
            (m.stem_multiplier >= 1, f"model.stem_multiplier must be at least 1, got {m.stem_multiplier}"),
            (s.path_sampling in ("all", "proxyless"),
             f"search.path_sampling must be all or proxyless (better: search.method), got {s.path_sampling!r}"),
            (s.cost_weight >= 0, f"search.cost_weight must be >= 0 (0 turns the cost term off), got {s.cost_weight}"),
            (s.cost in ("macs", "latency"), f"search.cost must be macs or latency, got {s.cost!r}"),
            (s.lr_schedule in LR_SCHEDULES,
             f"search.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {s.lr_schedule!r}"),
            (s.lr_power >= 1, f"search.lr_power must be at least 1 (1 is cosine), got {s.lr_power}"),
            (m.partial_channels >= 1 and m.init_channels % m.partial_channels == 0,
             f"model.partial_channels must be >= 1 and divide model.init_channels ({m.init_channels}), "
             f"got {m.partial_channels}"),
        ]
        check_all(checks)
        self.validate_run()
        if s.path_sampling == "proxyless":   # the old spelling of the proxyless method
            if s.method not in ("darts", "proxyless"):
                raise DassError(f"search.path_sampling=proxyless conflicts with search.method={s.method}")
            s.method, s.path_sampling = "proxyless", "all"
        get_method(s.method).check(s)
        space = get_space(m.space)
        if m.space != "darts" and list(m.ops) == list(PRIMITIVES):   # --space nb201 alone: that space's own ops
            m.ops = list(space.default_ops)
        space.check(m)
        if s.cost_weight > 0 and m.space != "darts":
            raise DassError(f"search.cost_weight > 0 (the cost model) supports the darts space only, not {m.space}")
        if s.mode == "three_phase" and s.epochs.warmup + s.epochs.prune + s.epochs.finetune == 0:
            raise DassError("all phase epochs are 0: nothing to search; set --epochs or search.epochs.*")
        return self


def make_config(preset: str | None = "default", overrides: dict | None = None, sets: list[str] | None = None) -> SearchRunConfig:
    """Defaults, then the preset or YAML file, then flag overrides, then ``--set`` items, validated."""
    return layered(SearchRunConfig, resolve_preset(preset) if preset else None, overrides, sets)
