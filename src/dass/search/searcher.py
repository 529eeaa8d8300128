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
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import AugmentConfig, Normalization, TensorBatches, load_dataset, split_train_val
from ..errors import DassError
from ..loop import cosine_lr, evaluate, set_lr, sgd_step
from ..runtime import RunDir, load_checkpoint, new_run_dir, save_checkpoint
from ..runtime.config import build, to_dict
from ..runtime.config import load_yaml
from ..sparse import Phase, configure_phase, init_scores, overall_density, set_sparsity
from ..sparse.layers import sparse_layers
from ..space import Genotype, Supernet, SupernetConfig
from .architect import Architect, LowerLevel
from .config import SearchRunConfig

log = logging.getLogger(__name__)
KILL_ENV = "_DASS_TEST_KILL_AFTER_STEPS"  # test hook: SIGKILL this process after N steps


@dataclass(frozen=True)
class PhasePlan:
    name: str
    phase: Phase
    epochs: int

    @property
    def sparse(self) -> bool:
        return self.phase is not Phase.DENSE


def phase_plan(config: SearchRunConfig) -> list[PhasePlan]:
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

    def __init__(self, model: Supernet, plan: PhasePlan, config: SearchRunConfig):
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


class DassSearch:
    """One search run in its run directory. Build with :meth:`create` or :meth:`resume`."""

    def __init__(self, config: SearchRunConfig, run_dir: RunDir, progress: bool = True):
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        if config.threads:
            torch.set_num_threads(config.threads)
        self._setup_data()
        torch.manual_seed(config.seed)
        m = config.model
        self.model = Supernet(SupernetConfig(m.init_channels, m.layers, m.nodes, m.multiplier, m.stem_multiplier,
                                             list(m.ops), self.in_channels, self.num_classes))
        s = config.search
        self.arch_optimizer = torch.optim.Adam(self.model.arch_parameters(), lr=s.arch_lr,
                                               betas=(s.arch_beta1, s.arch_beta2), weight_decay=s.arch_weight_decay)
        self.architect = Architect(self.model, self.model.arch_parameters(), self.arch_optimizer, s.order,
                                   s.unrolled_eps)
        self.plan = phase_plan(config)
        self.position = {"phase": 0, "epoch": 0, "step": 0}
        self.sums = self._empty_sums()
        self.history: list[dict] = []
        self.lower: _LowerOptimizers | None = None
        self._entered = -1

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def create(cls, config: SearchRunConfig, out: str | None = None, progress: bool = True) -> "DassSearch":
        path = new_run_dir(out, "search")
        run_dir = RunDir(path)
        search = cls(config, run_dir, progress)
        run_dir.write_config(to_dict(config))
        return search

    @classmethod
    def resume(cls, path: str | Path, progress: bool = True) -> "DassSearch":
        run_dir = RunDir(Path(path))
        if not run_dir.path.is_dir():
            raise DassError(f"{path} is not a directory; --resume takes the run directory of an earlier search")
        state = load_checkpoint(run_dir.file(RunDir.CHECKPOINT), "search")
        config = build(SearchRunConfig, load_yaml(run_dir.file(RunDir.CONFIG))).validate()
        search = cls(config, run_dir, progress)
        search._load_state(state)
        return search

    def _setup_data(self) -> None:
        d, s = self.config.data, self.config.search
        dataset = load_dataset(d.dataset, d.data_dir, d.download).subset(d.subset)
        self.dataset_name = dataset.name
        self.in_channels, self.num_classes = dataset.in_channels, dataset.num_classes
        train_idx, val_idx = split_train_val(len(dataset.x_train), d.val_fraction, self.config.seed)
        norm = Normalization.fit(dataset.x_train[train_idx])
        x_all, y_all = norm(dataset.x_train), torch.from_numpy(dataset.y_train)
        t_idx, v_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        aug = AugmentConfig(d.crop_padding, d.flip, d.cutout)
        seed = self.config.seed
        self.train_batches = TensorBatches(x_all[t_idx], y_all[t_idx], s.batch_size, seed, stream=1, augment_config=aug)
        self.val_batches = TensorBatches(x_all[v_idx], y_all[v_idx], s.batch_size, seed, stream=2, augment_config=aug)
        self.val_eval = TensorBatches(x_all[v_idx], y_all[v_idx], max(s.batch_size, 256), seed, stream=3, shuffle=False)

    @property
    def steps_per_epoch(self) -> int:
        return min(len(self.train_batches), len(self.val_batches))

    # -- phases ----------------------------------------------------------------------------------
    def _enter_phase(self, index: int, fresh: bool) -> None:
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
        self._entered = index

    @staticmethod
    def _empty_sums() -> dict:
        return {"train_loss": 0.0, "train_correct": 0, "train_count": 0, "arch_loss": 0.0, "steps": 0, "seconds": 0.0}

    # -- checkpointing ---------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "lower_optimizers": self.lower.state_dict() if self.lower else {},
            "lower_phase": self._entered,
            "position": dict(self.position),
            "sums": dict(self.sums),
            "history": self.history,
            "log_records": len(self.run_dir.log_records()),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self) -> None:
        save_checkpoint(self.run_dir.file(RunDir.CHECKPOINT), self._state(), "search")

    def _load_state(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.arch_optimizer.load_state_dict(state["arch_optimizer"])
            self.position = {k: int(v) for k, v in state["position"].items()}
            index = self.position["phase"]
            if index < len(self.plan):
                fresh = self.position["epoch"] == 0 and self.position["step"] == 0
                self._enter_phase(index, fresh)
                if int(state["lower_phase"]) == index:
                    assert self.lower is not None
                    self.lower.load_state_dict(state["lower_optimizers"])
            self.sums = dict(state["sums"])
            self.history = list(state["history"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise DassError(f"checkpoint in {self.run_dir.path} does not match its config.yaml ({str(exc)[:200]}); "
                            "was the config edited? Restore it or start a new run") from None
        self.run_dir.truncate_log(int(state["log_records"]))

    # -- the loop --------------------------------------------------------------------------------
    def total_steps(self) -> int:
        return sum(p.epochs for p in self.plan) * self.steps_per_epoch

    def steps_done(self) -> int:
        done = sum(p.epochs for p in self.plan[:self.position["phase"]]) * self.steps_per_epoch
        return done + self.position["epoch"] * self.steps_per_epoch + self.position["step"]

    def run(self) -> SearchResult:
        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        steps_this_process = 0
        s = self.config.search
        last_save = time.monotonic()
        bar = tqdm(total=self.total_steps(), initial=self.steps_done(), disable=not self.progress,
                   desc="search", unit="step", dynamic_ncols=True, leave=True)
        try:
            while self.position["phase"] < len(self.plan):
                index = self.position["phase"]
                plan = self.plan[index]
                if self._entered != index:
                    self._enter_phase(index, fresh=self.position["epoch"] == 0 and self.position["step"] == 0)
                assert self.lower is not None
                while self.position["epoch"] < plan.epochs:
                    epoch = self.position["epoch"]
                    lrs = self.lower.set_epoch(epoch)
                    bar.set_description(f"{plan.name} {epoch + 1}/{plan.epochs}")
                    self.model.train()
                    pairs = zip(self.train_batches.batches(self._epoch_key(), self.position["step"]),
                                self.val_batches.batches(self._epoch_key(), self.position["step"]))
                    for (x_t, y_t), (x_v, y_v) in pairs:
                        if self.position["step"] >= self.steps_per_epoch:
                            break
                        t0 = time.perf_counter()
                        self._step(x_t, y_t, x_v, y_v)
                        self.sums["seconds"] += time.perf_counter() - t0
                        self.position["step"] += 1
                        bar.update(1)
                        bar.set_postfix(loss=f"{self.sums['train_loss'] / self.sums['steps']:.3f}")
                        steps_this_process += 1
                        if kill_after and steps_this_process >= kill_after:
                            os.kill(os.getpid(), signal.SIGKILL)
                        if time.monotonic() - last_save >= self.config.checkpoint_minutes * 60:
                            self.save()
                            last_save = time.monotonic()
                    self._end_epoch(plan, lrs)
                    self.save()
                    last_save = time.monotonic()
                self.position = {"phase": index + 1, "epoch": 0, "step": 0}
                self.save()
        finally:
            bar.close()
        return self._finish()

    def _epoch_key(self) -> int:
        """A global epoch number, so each phase's epochs draw their own batch orders."""
        return sum(p.epochs for p in self.plan[:self.position["phase"]]) + self.position["epoch"]

    def _step(self, x_t: torch.Tensor, y_t: torch.Tensor, x_v: torch.Tensor, y_v: torch.Tensor) -> None:
        assert self.lower is not None
        s = self.config.search
        self.sums["arch_loss"] += self.architect.step(x_t, y_t, x_v, y_v, self.lower.primary())
        loss = correct = 0
        for name, (params, opt, _, _) in self.lower.groups.items():
            loss, correct = sgd_step(self.model, params, opt, x_t, y_t, s.grad_clip)
        self.sums["train_loss"] += loss
        self.sums["train_correct"] += correct
        self.sums["train_count"] += len(y_t)
        self.sums["steps"] += 1

    def _end_epoch(self, plan: PhasePlan, lrs: dict[str, float]) -> None:
        sums = self.sums
        steps = max(sums["steps"], 1)
        record = {
            "phase": plan.name,
            "epoch": self.position["epoch"] + 1,
            "epochs": plan.epochs,
            "train_loss": sums["train_loss"] / steps,
            "train_acc": sums["train_correct"] / max(sums["train_count"], 1),
            "arch_val_loss": sums["arch_loss"] / steps,
            "lr": lrs,
            "density": overall_density(self.model),
            "seconds_per_step": sums["seconds"] / steps,
        }
        if self.config.search.eval_val:
            record["val_loss"], record["val_acc"] = evaluate(self.model, self.val_eval.batches(0))
        record["alphas"] = self.model.alpha_softmax()
        record["genotype"] = self.model.genotype().to_dict()
        self.history.append({"phase": plan.name, "epoch": record["epoch"], "alphas": record["alphas"]})
        self.run_dir.log(record)
        log.info("%s epoch %d/%d train_loss %.4f val_acc %s", plan.name, record["epoch"], plan.epochs,
                 record["train_loss"], record.get("val_acc"))
        self.position["epoch"] += 1
        self.position["step"] = 0
        self.sums = self._empty_sums()

    def _finish(self) -> SearchResult:
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
        }
        if records and "val_acc" in records[-1]:
            meta["search_val_acc"] = records[-1]["val_acc"]
        genotype = Genotype(genotype.normal, genotype.normal_concat, genotype.reduce, genotype.reduce_concat, meta)
        genotype.save(self.run_dir.file("genotype.json"))
        from ..viz import plot_alpha_history, draw_genotype

        plot_alpha_history(self.history, list(self.config.model.ops), self.run_dir.file("alphas.png"))
        draw_genotype(genotype, self.run_dir.file("cells.png"))
        return SearchResult(genotype, self.run_dir.path, self.model)


def search(config: SearchRunConfig, out: str | None = None, progress: bool = True) -> SearchResult:
    """Run a DASS search from scratch; the library twin of ``dass search``."""
    return DassSearch.create(config, out, progress).run()


def resume(run_dir: str | Path, progress: bool = True) -> SearchResult:
    """Continue an interrupted search from its run directory (``dass search --resume``)."""
    return DassSearch.resume(run_dir, progress).run()
