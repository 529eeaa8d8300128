"""A resumable run made of phases of epochs of steps: the loop that search and training share.

The base class owns what must be identical everywhere: the position (phase, epoch, step), the
progress bar, checkpoint cadence (every epoch end, and every ``checkpoint_minutes`` mid-epoch),
the log records written after the checkpoint being resumed, and the test hook that SIGKILLs the
process after N steps. Subclasses say what a phase, a step and an epoch record are.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from .errors import DassError
from .runtime import RunDir, load_checkpoint, new_run_dir, save_checkpoint
from .runtime.config import build, load_yaml, to_dict
from .runtime.device import resolve_device, to_device
from .runtime.memory import keep_freed_memory
from .sparse import Phase

KILL_ENV = "_DASS_TEST_KILL_AFTER_STEPS"  # test hook: SIGKILL this process after N steps


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    phase: Phase
    epochs: int

    @property
    def sparse(self) -> bool:
        return self.phase is not Phase.DENSE


class PhasedRun:
    """Subclasses set ``kind``, ``plan``, ``model`` and implement the hooks below."""

    kind = "run"
    config_class: type
    plan: list[PhaseSpec]
    model: torch.nn.Module

    def __init__(self, config: Any, run_dir: RunDir, progress: bool):
        self.config = config
        self.run_dir = run_dir
        self.checkpoint_minutes = config.checkpoint_minutes
        self.progress = progress
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        keep_freed_memory()   # steps reuse the same big activations: no page faults for them every step
        self.position = {"phase": 0, "epoch": 0, "step": 0}
        self.sums: dict[str, float] = {}
        self.history: list[dict] = []
        self._entered = -1

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, config: Any, out: str | None = None, progress: bool = True):
        """A new run in ``out`` (default ``runs/KIND-TIMESTAMP``), its resolved config written there."""
        run_dir = RunDir(new_run_dir(out, cls.kind))
        run = cls(config, run_dir, progress)
        run_dir.write_config(to_dict(config))
        run.on_create()
        return run

    @classmethod
    def resume(cls, path: str | Path, progress: bool = True, device: str | None = None):
        """The run in ``path``, restored from its checkpoint, ready to continue (on ``device`` if given, else on
        the device it ran on)."""
        run_dir = RunDir(Path(path))
        if not run_dir.path.is_dir():
            raise DassError(f"{path} is not a directory; --resume takes the run directory of an earlier {cls.kind}")
        load_checkpoint(run_dir.file(RunDir.CHECKPOINT), cls.kind)  # fail early, before loading data
        config = build(cls.config_class, load_yaml(run_dir.file(RunDir.CONFIG)))
        if device is not None:
            config.device = device
        run = cls(config.validate(), run_dir, progress)
        run.restore()
        return run

    def on_create(self) -> None:
        """Anything a new run directory needs beside the config."""

    # -- hooks ------------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def enter_phase(self, index: int, fresh: bool) -> None:
        """Configure the model and build this phase's optimizers (``fresh``: the phase starts now)."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> dict[str, float]:
        """Set learning rates for an epoch of the current phase; returns them for the log."""
        raise NotImplementedError

    def batches(self, epoch_key: int, start: int) -> Iterator[Any]:
        raise NotImplementedError

    def train_step(self, batch: Any) -> None:
        """One optimisation step; accumulates into ``self.sums``."""
        raise NotImplementedError

    def epoch_record(self, spec: PhaseSpec, lrs: dict[str, float]) -> dict:
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Everything else a checkpoint must hold (model, optimizers)."""
        raise NotImplementedError

    def load_extra_state(self, state: dict, lower_phase: int) -> None:
        raise NotImplementedError

    def finish(self) -> Any:
        raise NotImplementedError

    def accumulate(self, **values: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0) + value

    def mean(self, key: str, per: str = "steps") -> float:
        return self.sums.get(key, 0.0) / max(self.sums.get(per, 0), 1)

    # -- position ---------------------------------------------------------------------------------
    def total_steps(self) -> int:
        return sum(p.epochs for p in self.plan) * self.steps_per_epoch

    def steps_done(self) -> int:
        done = sum(p.epochs for p in self.plan[:self.position["phase"]]) * self.steps_per_epoch
        return done + self.position["epoch"] * self.steps_per_epoch + self.position["step"]

    def epoch_key(self) -> int:
        """A global epoch number, so that each phase's epochs draw their own batch orders."""
        return sum(p.epochs for p in self.plan[:self.position["phase"]]) + self.position["epoch"]

    def _enter(self, index: int, fresh: bool) -> None:
        self.enter_phase(index, fresh)
        self._entered = index

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self) -> None:
        state = {
            **self.extra_state(),
            "lower_phase": self._entered,
            "position": dict(self.position),
            "sums": dict(self.sums),
            "history": self.history,
            "log_records": len(self.run_dir.log_records()),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":   # drop-path and dropout draw from the GPU's generator
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.run_dir.file(RunDir.CHECKPOINT), state, self.kind)

    def restore(self) -> None:
        """Load the run directory's checkpoint into this freshly built run."""
        state = load_checkpoint(self.run_dir.file(RunDir.CHECKPOINT), self.kind)
        try:
            self.position = {k: int(v) for k, v in state["position"].items()}
            index = self.position["phase"]
            self.load_extra_state(state, int(state["lower_phase"]) if index < len(self.plan) else -1)
            if index < len(self.plan):
                fresh = self.position["epoch"] == 0 and self.position["step"] == 0
                self._enter(index, fresh)
                if int(state["lower_phase"]) == index:
                    self.load_optimizer_state(state)
            self.sums = dict(state["sums"])
            self.history = list(state["history"])
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise DassError(f"checkpoint in {self.run_dir.path} does not match its config.yaml ({str(exc)[:200]}); "
                            "was the config edited? Restore it or start a new run") from None
        self.run_dir.truncate_log(int(state["log_records"]))

    def load_optimizer_state(self, state: dict) -> None:
        """Load the current phase's optimizer state (called after ``enter_phase`` on resume)."""
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Any:
        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        steps_here = 0
        last_save = time.monotonic()
        bar = tqdm(total=self.total_steps(), initial=self.steps_done(), disable=not self.progress,
                   desc=self.kind, unit="step", dynamic_ncols=True)
        try:
            while self.position["phase"] < len(self.plan):
                index = self.position["phase"]
                spec = self.plan[index]
                if self._entered != index:
                    self._enter(index, fresh=self.position["epoch"] == 0 and self.position["step"] == 0)
                while self.position["epoch"] < spec.epochs:
                    lrs = self.set_epoch(self.position["epoch"])
                    bar.set_description(f"{spec.name} {self.position['epoch'] + 1}/{spec.epochs}")
                    self.model.train()
                    for batch in self.batches(self.epoch_key(), self.position["step"]):
                        if self.position["step"] >= self.steps_per_epoch:
                            break
                        t0 = time.perf_counter()
                        self.train_step(to_device(batch, self.device))
                        self.sums["seconds"] = self.sums.get("seconds", 0.0) + time.perf_counter() - t0
                        self.sums["steps"] = self.sums.get("steps", 0) + 1
                        self.position["step"] += 1
                        bar.update(1)
                        if "train_loss" in self.sums:
                            bar.set_postfix(loss=f"{self.sums['train_loss'] / self.sums['steps']:.3f}")
                        steps_here += 1
                        if kill_after and steps_here >= kill_after:
                            os.kill(os.getpid(), signal.SIGKILL)
                        if time.monotonic() - last_save >= self.checkpoint_minutes * 60:
                            self.save()
                            last_save = time.monotonic()
                    record = {"phase": spec.name, "epoch": self.position["epoch"] + 1, "epochs": spec.epochs,
                              **self.epoch_record(spec, lrs),
                              "seconds_per_step": self.sums.get("seconds", 0.0) / max(self.sums.get("steps", 0), 1)}
                    self.run_dir.log(record)
                    self.position["epoch"] += 1
                    self.position["step"] = 0
                    self.sums = {}
                    self.save()
                    last_save = time.monotonic()
                self.position = {"phase": index + 1, "epoch": 0, "step": 0}
                self.save()
        finally:
            bar.close()
        return self.finish()
