"""In-memory batching with deterministic order: batch ``b`` of epoch ``e`` depends only on the seed.

Small image datasets fit in memory as one float tensor, so a plain index permutation beats a
DataLoader with workers, and it makes resuming from the middle of an epoch exact: the batch order
and each batch's augmentation are recomputed from ``(seed, epoch, step)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..errors import DassError
from .augment import AugmentConfig, augment
from .datasets import ImageDataset


def stream_generator(*keys: int) -> torch.Generator:
    """A generator seeded by a tuple of integers (seed, epoch, step, stream...)."""
    seed = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


@dataclass
class Normalization:
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, images: np.ndarray) -> "Normalization":
        x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        std = x.std(axis=0)
        return cls(torch.tensor(x.mean(axis=0), dtype=torch.float32),
                   torch.tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


class TensorBatches:
    """Shuffled (or ordered) mini-batches of a tensor dataset; ``batches(epoch, start)`` is restartable."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, stream: int,
                 shuffle: bool = True, augment_config: AugmentConfig | None = None, drop_last: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DassError(f"the batch size must be a whole number >= 1, got {batch_size!r}")
        if len(x) == 0 or len(x) != len(y):
            raise DassError(f"cannot batch {len(x)} images with {len(y)} labels: need at least one image, "
                            "one label each")
        self.x, self.y = x, y
        self.batch_size = min(batch_size, len(x))
        self.seed, self.stream = seed, stream
        self.shuffle = shuffle
        self.augment_config = augment_config
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.x))
        return torch.randperm(len(self.x), generator=stream_generator(self.seed, self.stream, epoch))

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        for step in range(start, len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            x = self.x[idx]
            if self.augment_config is not None:
                x = augment(x, self.augment_config, stream_generator(self.seed, self.stream, epoch, step, 1))
            yield x, self.y[idx]


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of ``n`` training indices (the search's train/val halves); both parts non-empty."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise DassError(f"data.val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise DassError(f"the search splits the training set into train and validation parts "
                        f"(data.val_fraction={val_fraction}), but {n} training image(s) leave the train part empty; "
                        f"use more images (--subset) or a smaller data.val_fraction")
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val:], order[:n_val]


__all__ = ["ImageDataset", "Normalization", "TensorBatches", "split_train_val", "stream_generator"]
