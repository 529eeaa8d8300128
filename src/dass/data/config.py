"""The ``data`` section shared by search and training configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DataConfig:
    dataset: str = "digits"
    data_dir: Optional[str] = None
    download: bool = False
    subset: Optional[int] = None      # use only the first N training images
    val_fraction: float = 0.5         # the search splits the training set into train / val
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0
