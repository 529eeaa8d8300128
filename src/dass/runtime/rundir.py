"""The run directory: one run's manifest, resolved config, JSON-lines log, checkpoint and outputs.

A run directory belongs to one run. ``run.json`` (the manifest) names the run's id, kind and the hash
of its resolved config; checkpoints carry the same id and hash, so ``--resume`` can tell a checkpoint
copied from another run, or a hand-edited ``config.yaml``, from the run's own files. A new run never
writes into a folder that holds anything: ``force`` moves the old folder aside (never deletes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import DassError
from .config import dump_yaml
from .events import EventLog
from .files import atomic_write_text

MANIFEST = "run.json"
MANIFEST_FORMAT = "dass-run"


def config_hash(config: dict) -> str:
    """A stable hash of a resolved config (key order and YAML formatting do not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_writable_target(path: Path) -> None:
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise DassError(f"--out {path}: {parent} is a file, not a folder; choose another --out")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise DassError(f"--out {path}: cannot write in {parent} (permission denied or a read-only "
                                "file system); choose another --out")
            return


def _moved_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    return target


def check_run_dir(out: str | Path | None, kind: str, force: bool = False) -> Path:
    """The folder a new run will write (nothing is created yet): ``out``, or ``runs/KIND-TIMESTAMP``.

    A non-empty ``out`` is refused (it may hold a finished run or the user's own files) unless
    ``force``; :func:`claim_run_dir` then moves the old folder aside to ``OUT.replaced-TIMESTAMP``.
    """
    if out is None:
        base = Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        _check_writable_target(path)
        return path
    path = Path(out)
    _check_writable_target(path)
    if path.exists() and any(path.iterdir()) and not force:
        what = (f"the {kind} run there with --resume {path}, or "
                if (path / RunDir.CHECKPOINT).exists() or (path / MANIFEST).exists() else "")
        raise DassError(f"--out {path} is not empty; continue {what}choose another --out, or add --force to move "
                        f"the folder aside to {path.name}.replaced-TIMESTAMP (nothing is deleted)")
    return path


def claim_run_dir(path: Path) -> Path:
    """Create the run folder checked by :func:`check_run_dir`, moving a non-empty one aside first."""
    if path.exists() and any(path.iterdir()):
        target = _moved_aside(path)
        os.replace(path, target)
        print(f"dass: moved the old contents of {path} to {target}", flush=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DassError(f"cannot create the run folder {path} ({exc.strerror}); choose another --out") from None
    return path


def new_run_dir(out: str | Path | None, kind: str, force: bool = False) -> Path:
    """A new, empty run folder (see :func:`check_run_dir`)."""
    return claim_run_dir(check_run_dir(out, kind, force))


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files of atomic writes cut short by a kill (``.NAME.XXXX.tmp``, ours only)."""
    for tmp in folder.glob(".*.tmp"):
        if tmp.is_file() and tmp.name.count(".") >= 3:
            tmp.unlink(missing_ok=True)


class RunDir:
    CONFIG = "config.yaml"
    LOG = "log.jsonl"
    CHECKPOINT = "checkpoint.pt"
    MANIFEST = MANIFEST
    EVENTS = "events"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._events: EventLog | None = None   # TensorBoard events, opened at the first record
        self._n_records: int | None = None     # records in log.jsonl, counted at the first record

    def file(self, name: str) -> Path:
        return self.path / name

    # -- identity ---------------------------------------------------------------------------------
    def write_manifest(self, kind: str, config: dict) -> dict:
        from .. import __version__

        manifest = {"format": MANIFEST_FORMAT, "kind": kind, "run_id": uuid.uuid4().hex,
                    "config_hash": config_hash(config), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "dass_version": __version__}
        atomic_write_text(self.file(MANIFEST), json.dumps(manifest, indent=2) + "\n")
        return manifest

    def manifest(self) -> dict | None:
        """The run's manifest, or None for a run written before manifests existed."""
        path = self.file(MANIFEST)
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DassError(f"{path} is damaged ({exc}); it names the run this folder belongs to") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise DassError(f"{path} is not a dass run manifest")
        return manifest

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.file(self.CONFIG), dump_yaml(config))

    # -- the log ----------------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to log.jsonl, then write it as TensorBoard events at step = its number in the log."""
        path = self.file(self.LOG)
        text = json.dumps(record) + "\n"
        if path.exists() and path.stat().st_size:   # a torn last line (killed mid-append) is dropped first
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self.truncate_log(len(self.log_records()))
        if self._n_records is None:
            self._n_records = len(self.log_records())
        with open(path, "a") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        self._n_records += 1
        self.events().write(record, step=self._n_records)

    def events(self) -> EventLog:
        """The run's TensorBoard event log (``events/``); it never raises, and turns off after a failure."""
        if self._events is None:
            self._events = EventLog(self.file(self.EVENTS))
        return self._events

    def log_records(self) -> list[dict]:
        """The log's records; a partial last line (a kill or a full disk during the append) is ignored."""
        path = self.file(self.LOG)
        if not path.exists():
            return []
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise DassError(f"{path} is not a dass log (not UTF-8 text)") from None
        lines = text.split("\n")
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if i == len(lines) - 1:   # the last line, without its newline: an append cut short
                    break
                raise DassError(f"{path} line {i + 1} is damaged (not JSON); restore the file, or delete the lines "
                                "from there on and resume (they are written again)") from None
            if not isinstance(record, dict):
                raise DassError(f"{path} line {i + 1} is not a log record")
            records.append(record)
        return records

    def truncate_log(self, n_records: int) -> None:
        """Drop records written after the checkpoint being resumed (they will be written again)."""
        records = self.log_records()
        if len(records) < n_records:
            raise DassError(f"{self.file(self.LOG)} holds {len(records)} records but the checkpoint was written after "
                            f"{n_records}; the log was cut or replaced. Restore it, or start a new run")
        atomic_write_text(self.file(self.LOG), "".join(json.dumps(r) + "\n" for r in records[:n_records]))
        self._n_records = n_records
        events = self.events()
        if not events.folder.exists():   # a run from before event files: its records so far first
            for step, record in enumerate(records[:n_records], 1):
                events.write(record, step)
        events.purge_from(n_records + 1)   # TensorBoard drops the events of the records written again
