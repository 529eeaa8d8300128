"""Atomic file writes: a crash mid-write never leaves a half-written file in place of a good one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import DassError


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path`` (same directory, so rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_write(path, write)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (short form): ties derived files to the model they were made from."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_writable(folder: Path, what: str) -> None:
    """Fail before any work if ``folder`` cannot take new files (read-only file system, permissions)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DassError(f"{folder} is not a folder; {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DassError(f"cannot write in {folder} (permission denied or a read-only file system); {what}")
