"""The run directory: resolved config, JSON-lines log, checkpoint and outputs of one run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import DassError
from .config import dump_yaml
from .files import atomic_write_text


def new_run_dir(out: str | None, kind: str) -> Path:
    if out:
        path = Path(out)
        if (path / "checkpoint.pt").exists():
            raise DassError(f"{path} already holds a run; resume it with --resume {path} or choose another --out")
    else:
        path = Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunDir:
    CONFIG = "config.yaml"
    LOG = "log.jsonl"
    CHECKPOINT = "checkpoint.pt"

    def __init__(self, path: Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.file(self.CONFIG), dump_yaml(config))

    def log(self, record: dict[str, Any]) -> None:
        with open(self.file(self.LOG), "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def log_records(self) -> list[dict]:
        path = self.file(self.LOG)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_log(self, n_records: int) -> None:
        """Drop records written after the checkpoint being resumed (they will be written again)."""
        records = self.log_records()[:n_records]
        atomic_write_text(self.file(self.LOG), "".join(json.dumps(r) + "\n" for r in records))
