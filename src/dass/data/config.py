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
    image_size: Optional[int] = None  # image folders: store images at N x N (unset: the folder's own size, see docs)
    split_fraction: float = 0.2       # image folders without train/ + val/: each class's share held out for testing
    val_fraction: float = 0.5         # the search splits the training set into train / val
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0
