"""A resumable run made of phases of epochs of steps: the loop that search and training share.

The base class owns what must be identical everywhere: the position (phase, epoch, step), the
progress bar, checkpoint cadence (every epoch end, and every ``checkpoint_minutes`` mid-epoch),
the log records written after the checkpoint being resumed, and the test hook that SIGKILLs the
process after N steps. Subclasses say what a phase, a step and an epoch record are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from .errors import DassError, Interrupted
from .runtime import RunDir, load_checkpoint, save_checkpoint
from .runtime.config import build, load_yaml, to_dict
from .runtime.rundir import check_run_dir, claim_run_dir, config_hash, remove_stale_temporaries
from .distributed import World, init_world
from .runtime.device import resolve_device, to_device
from .runtime.precision import Precision, set_precision
from .runtime.memory import keep_freed_memory
from .sparse import Phase

KILL_ENV = "_DASS_TEST_KILL_AFTER_STEPS"  # test hook: signal this process after N steps ...
KILL_SIGNAL_ENV = "_DASS_TEST_KILL_SIGNAL"  # ... with this signal (default SIGKILL)
KILL_RANK_ENV = "_DASS_TEST_KILL_RANK"      # ... in this rank only (default: every rank)
DUMP_ENV = "_DASS_TEST_DUMP_STATE"          # test hook: every rank saves its model state here at each epoch end


def rank_device(device: torch.device, world: World) -> torch.device:
    """Under torchrun, ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``)."""
    if world.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def default_threads(world: World) -> int:
    """Intra-op threads when none are configured: ``OMP_NUM_THREADS`` if set, else the cores this process may use
    shared by the ranks that run on this machine (more threads than cores only spin against each other)."""
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) >= 1:
        return int(configured)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, world.local_size))


class Diverged(DassError):
    """A loss or parameter became NaN or infinite: the run stops, its last good checkpoint kept."""


def log_hash(records: list[dict]) -> str:
    return hashlib.sha256("".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()).hexdigest()[:16]


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        return out
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


def check_belongs(run_dir: RunDir, state: dict, written: dict) -> dict | None:
    """Check that the checkpoint, ``config.yaml`` (as ``written``) and the manifest are of one run; the manifest."""
    manifest = run_dir.manifest()
    ours, theirs = (manifest or {}).get("run_id"), state.get("run_id")
    if ours != theirs:
        if theirs is None or ours is None:
            problem = (f"{RunDir.MANIFEST} is missing" if ours is None
                       else "the checkpoint carries no run id (it was written by an older dass or another run)")
        else:
            problem = f"checkpoint.pt belongs to run {theirs}, this folder to run {ours}"
        raise DassError(f"{run_dir.path}: {problem}; --resume continues a run from its own files. Put back the "
                        "run's own checkpoint.pt and run.json, or start a new run")
    n_records, records = int(state.get("log_records", 0)), run_dir.log_records()
    if len(records) < n_records or ("log_hash" in state and log_hash(records[:n_records]) != state["log_hash"]):
        raise DassError(f"{run_dir.file(RunDir.LOG)} does not belong to the checkpoint in {run_dir.path} (records "
                        "missing or changed); restore the run's own log, or start a new run")
    if "config" in state:
        changed = _differences(state["config"], written)
    elif manifest is not None and manifest.get("config_hash") != config_hash(written):
        changed = ["(config hash differs)"]
    else:
        changed = []
    if changed:
        raise DassError(f"{run_dir.file(RunDir.CONFIG)} differs from the config the run was started with "
                        f"({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}); a resumed run must keep its "
                        "config. Restore the file, or start a new run with the new settings")
    return manifest


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
        self.world = init_world(resolve_device(config.device))
        self.device = rank_device(resolve_device(config.device), self.world)
        torch.set_num_threads(config.threads or default_threads(self.world))
        self.precision = set_precision(Precision(config.precision, self.device.type))
        keep_freed_memory()   # steps reuse the same big activations: no page faults for them every step
        self.position = {"phase": 0, "epoch": 0, "step": 0}
        self.sums: dict[str, float] = {}
        self.history: list[dict] = []
        self._entered = -1
        self.manifest: dict | None = None
        self.written_config: dict = to_dict(config)   # as config.yaml holds it (device/threads may differ here)
        self._stop: str | None = None   # the signal that asked the run to stop at the next step boundary

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, config: Any, out: str | None = None, progress: bool = True, force: bool = False):
        """A new run in ``out`` (default ``runs/KIND-TIMESTAMP``), its manifest and resolved config written there.

        The folder is created only once the run is built (data loaded, model made), so a failed start leaves
        nothing behind; a non-empty ``out`` is refused unless ``force`` (which moves it aside)."""
        world = init_world(resolve_device(config.device))
        path = world.broadcast(check_run_dir(out, cls.kind, force) if world.main else None)  # (names hold a time)
        run = cls(config, RunDir(path), progress and world.main)
        resolved = to_dict(config)
        if world.main:
            claim_run_dir(path)
            run.manifest = run.run_dir.write_manifest(cls.kind, resolved)
            run.run_dir.write_config(resolved)
            run.on_create()
        run.manifest = world.broadcast(run.manifest)
        return run

    @classmethod
    def resume(cls, path: str | Path, progress: bool = True, device: str | None = None, threads: int | None = None):
        """The run in ``path``, restored from its checkpoint, ready to continue (on ``device`` if given, else on
        the device it ran on; with ``threads`` if given)."""
        run_dir = RunDir(Path(path))
        if not run_dir.path.is_dir():
            raise DassError(f"{path} is not a directory; --resume takes the run directory of an earlier {cls.kind}")
        if os.environ.get("RANK", "0") == "0":
            remove_stale_temporaries(run_dir.path)
        state = load_checkpoint(run_dir.file(RunDir.CHECKPOINT), cls.kind)  # fail early, before loading data
        written = load_yaml(run_dir.file(RunDir.CONFIG))
        manifest = check_belongs(run_dir, state, written)
        config = build(cls.config_class, written)
        if device is not None:
            config.device = device
        if threads is not None:
            config.threads = threads
        run = cls(config.validate(), run_dir, progress)
        run.progress = progress and run.world.main
        run.manifest, run.written_config = manifest, written
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
        """Add a step's values to the epoch sums; a non-finite value stops the run (it diverged).

        In a data-parallel run the values are those of the global batch (counts summed over the ranks, the
        rest averaged), so the sums, the log and the checkpoint are the same on every rank."""
        if self.world.distributed and values:
            keys = list(values)
            total = self.world.sum_(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)).tolist()
            values = {k: (v if k.endswith(("_count", "_correct")) else v / self.world.size)
                      for k, v in zip(keys, total)}
        for key, value in values.items():
            if not math.isfinite(float(value)):
                self._diverged(f"{key} is {float(value)}")
            self.sums[key] = self.sums.get(key, 0) + value

    def _diverged(self, what: str) -> None:
        spec = self.plan[self.position["phase"]] if self.position["phase"] < len(self.plan) else None
        where = (f"in phase {spec.name}, epoch {self.position['epoch'] + 1}, step {self.position['step'] + 1}"
                 if spec else "after its last phase")
        kept = self.run_dir.file(RunDir.CHECKPOINT)
        kept_text = (f"its last good checkpoint is kept in {kept}" if kept.is_file()
                     else "no checkpoint had been written yet")
        raise Diverged(f"the {self.kind} diverged {where}: {what}; {kept_text}. Lower the learning rates (or raise "
                       "the batch size) and start a new run")

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
    def _check_finite(self, parameters_only: bool = False) -> None:
        """Stop if the model holds NaN or infinity (some fused kernels map NaN to 0, so a finite loss is not enough)."""
        tensors = self.model.named_parameters() if parameters_only else self.model.state_dict().items()
        for name, tensor in tensors:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                self._diverged(f"{name} holds NaN or infinite values")

    def save(self) -> None:
        """Write a checkpoint; refused (the run stops) if the model holds non-finite values, so the checkpoint
        on disk is always a good one."""
        self._check_finite()
        if not self.world.main:   # rank 0 writes; every rank holds the same state
            return
        records = self.run_dir.log_records()
        state = {
            **self.extra_state(),
            "lower_phase": self._entered,
            "position": dict(self.position),
            "sums": dict(self.sums),
            "history": self.history,
            "log_records": len(records),
            "log_hash": log_hash(records),
            "run_id": (self.manifest or {}).get("run_id"),
            "config": self.written_config,
            "torch_rng": torch.get_rng_state(),
            "precision": self.precision.state_dict(),
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
            if "precision" in state:
                self.precision.load_state_dict(state["precision"])
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise DassError(f"checkpoint in {self.run_dir.path} does not match its config.yaml ({str(exc)[:200]}); "
                            "was the config edited? Restore it or start a new run") from None
        if self.world.main:
            self.run_dir.truncate_log(int(state["log_records"]))

    def load_optimizer_state(self, state: dict) -> None:
        """Load the current phase's optimizer state (called after ``enter_phase`` on resume)."""
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Any:
        """Run to the end. Ctrl-C or SIGTERM stops at the next step boundary with a checkpoint written
        (a second Ctrl-C stops at once); a NaN or infinite loss stops with the last good checkpoint kept."""
        if self.config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.world.main and not self.run_dir.file(RunDir.CHECKPOINT).is_file():
            self.save()   # so that --resume has something to continue from the first step on
        with self._stop_on_signals():
            result = self._loop()
        self.world.barrier()   # rank 0 has written the outputs
        return result

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        def ask_stop(signum: int, frame: Any) -> None:
            self._stop = signal.Signals(signum).name
            signal.signal(signal.SIGINT, signal.default_int_handler)   # a second Ctrl-C stops at once
            print(f"\ndass: {self._stop}: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr,
                  flush=True)

        try:
            previous = {sig: signal.signal(sig, ask_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:   # not the main thread: signals stay as they are
            previous = {}
        try:
            yield
        except KeyboardInterrupt:
            raise Interrupted(self._interrupted_message("stopped at once (mid-step)")) from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _interrupted_message(self, how: str) -> str:
        if self.run_dir.file(RunDir.CHECKPOINT).is_file():
            return (f"interrupted ({how}); the run is saved: continue with "
                    f"`dass {self.kind} --resume {self.run_dir.path}`")
        return f"interrupted ({how}) before the first checkpoint; start the {self.kind} again"

    def _loop(self) -> Any:
        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        kill_signal = getattr(signal, os.environ.get(KILL_SIGNAL_ENV, "SIGKILL"))
        if os.environ.get(KILL_RANK_ENV, str(self.world.rank)) != str(self.world.rank):
            kill_after = 0
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
                        try:
                            self.train_step(self.world.shard(to_device(batch, self.device, self.config.channels_last)))
                        except ValueError as exc:   # batch norm on one value per channel (batch 1, 1x1 planes)
                            if "more than 1 value per channel" not in str(exc):
                                raise
                            raise DassError("a batch of one image reaches batch norm with 1x1 feature maps, which "
                                            "cannot normalise it; use a batch size of at least 2 (and a "
                                            "training set of at least 2 images per batch)") from None
                        self._check_finite(parameters_only=True)
                        self.sums["seconds"] = self.sums.get("seconds", 0.0) + time.perf_counter() - t0
                        self.sums["steps"] = self.sums.get("steps", 0) + 1
                        self.position["step"] += 1
                        bar.update(1)
                        if "train_loss" in self.sums:
                            bar.set_postfix(loss=f"{self.sums['train_loss'] / self.sums['steps']:.3f}")
                        steps_here += 1
                        if kill_after and steps_here == kill_after:
                            os.kill(os.getpid(), kill_signal)
                        if self.world.any(self._stop is not None):   # every rank stops at the same step
                            self._stop = self._stop or "SIGTERM"
                            self.save()
                            raise Interrupted(self._interrupted_message(self._stop))
                        if time.monotonic() - last_save >= self.checkpoint_minutes * 60:
                            self.save()
                            last_save = time.monotonic()
                    self._check_finite()
                    record = {"phase": spec.name, "epoch": self.position["epoch"] + 1, "epochs": spec.epochs,
                              **self.epoch_record(spec, lrs),
                              "seconds_per_step": self.sums.get("seconds", 0.0) / max(self.sums.get("steps", 0), 1)}
                    if self.world.main:
                        self.run_dir.log(record)
                    if os.environ.get(DUMP_ENV):
                        torch.save(self.model.state_dict(), Path(os.environ[DUMP_ENV]) /
                                   f"rank{self.world.rank}-phase{index}-epoch{self.position['epoch']}.pt")
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
