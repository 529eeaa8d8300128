"""The options every run shares (search and training): seed, threads, checkpoints, device, data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..data.config import DataConfig
from ..errors import DassError
from .config import check_all
from .device import resolve_device

SEED_LIMIT = 2**32   # seeds feed NumPy's generators too, which take 32-bit seeds


@dataclass
class RunOptions:
    seed: int = 0
    threads: Optional[int] = None
    checkpoint_minutes: float = 10.0  # mid-epoch checkpoints; one is always written at each epoch end
    device: str = "cpu"               # cpu | cuda | cuda:N | mps
    precision: str = "fp32"           # fp32 | bf16 | fp16 (autocast; fp16 with dynamic loss scaling)
    channels_last: bool = False       # NHWC activations for convolutions (GPUs)
    data: DataConfig = field(default_factory=DataConfig)

    def validate_run(self) -> None:
        """Checks of the shared options (the device must exist on this machine); a dataset or data folder given
        by a relative path is made absolute, so the run's config finds it from any working directory."""
        d = self.data
        check_all([
            (0 <= self.seed < SEED_LIMIT, f"seed must be in 0..{SEED_LIMIT - 1}, got {self.seed}"),
            (self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}"),
            (self.checkpoint_minutes >= 0, f"checkpoint_minutes must not be negative (0: after every step), got "
             f"{self.checkpoint_minutes}"),
            (d.crop_padding >= 0 and d.cutout >= 0,
             f"data.crop_padding and data.cutout must not be negative, got {d.crop_padding} and {d.cutout}"),
        ])
        device = resolve_device(self.device)
        from .precision import PRECISIONS

        check_all([
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (not self.channels_last or device.type != "cpu",
             "channels_last helps GPU convolutions; dass's CPU kernels take NCHW: drop it with --device cpu"),
        ])
        from ..data.datasets import NAMED

        if d.dataset not in NAMED and _exists(d.dataset):
            d.dataset = str(Path(d.dataset).expanduser().resolve())
        if d.data_dir and _exists(d.data_dir):
            d.data_dir = str(Path(d.data_dir).expanduser().resolve())


def _exists(path: str) -> bool:
    try:
        return Path(path).expanduser().exists()
    except (OSError, ValueError):   # a name too long for the file system, a NUL byte: not a path that exists
        return False
