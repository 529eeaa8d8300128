"""Checkpoints: written atomically, loaded without executing pickled code, checked for their kind.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``. Its ``format`` field says which kind of run wrote it; loading a
checkpoint of another kind, or a file that is not a checkpoint at all, gives a clear error.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import DassError
from .files import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any], kind: str, version: int = 1) -> None:
    payload = {"format": f"dass-{kind}", "format_version": version, **state}
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, kind: str, version: int = 1) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DassError(f"no checkpoint at {path}; is this the run directory of a `dass {kind}` run?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DassError(f"checkpoint {path} is corrupt or not a dass checkpoint ({first[:200]}); "
                        "start a new run, or restore the file from a backup") from None
    if not isinstance(state, dict) or "format" not in state:
        raise DassError(f"{path} is not a dass checkpoint (no format tag); start a new run")
    if state["format"] != f"dass-{kind}":
        raise DassError(f"{path} is a {state['format']!r} checkpoint, not a dass-{kind} one; "
                        f"resume it with the command that wrote it")
    if state.get("format_version") != version:
        raise DassError(f"{path} has checkpoint format version {state.get('format_version')}, this dass reads "
                        f"version {version}; resume it with the dass version that wrote it")
    return state
