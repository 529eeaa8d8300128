"""The options every run shares (search and training): seed, threads, checkpoints, device, data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..data.config import DataConfig
from ..errors import DassError
from .device import resolve_device


@dataclass
class RunOptions:
    seed: int = 0
    threads: Optional[int] = None
    checkpoint_minutes: float = 10.0  # mid-epoch checkpoints; one is always written at each epoch end
    device: str = "cpu"               # cpu | cuda | cuda:N | mps
    data: DataConfig = field(default_factory=DataConfig)

    def validate_run(self) -> None:
        """Checks of the shared options (the device must exist on this machine)."""
        if self.threads is not None and self.threads < 1:
            raise DassError("threads must be at least 1")
        resolve_device(self.device)
