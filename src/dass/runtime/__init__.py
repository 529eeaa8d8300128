"""Run plumbing used by every stage: config, run directory, checkpoints, atomic files."""

from .checkpoint import load_checkpoint, save_checkpoint
from .files import atomic_write, atomic_write_text
from .rundir import RunDir, new_run_dir

__all__ = ["load_checkpoint", "save_checkpoint", "atomic_write", "atomic_write_text", "RunDir", "new_run_dir"]
