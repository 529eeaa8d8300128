"""Augmentation on whole batches of tensors (N x C x H x W): no per-image Python loop.

Every function takes an explicit ``torch.Generator`` so that a batch's augmentation is a pure
function of (seed, epoch, step): that is what lets an interrupted run resume bit-identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DassError

MAX_CROP_PADDING = 128   # each side; the padded batch is (H + 2p) x (W + 2p), so this bounds its memory


@dataclass
class AugmentConfig:
    crop_padding: int = 4   # random crop after zero padding; 0 disables
    flip: bool = True       # random horizontal flip
    cutout: int = 0         # side of the zeroed square; 0 disables

    def __post_init__(self) -> None:
        for name, value, top in (("crop_padding", self.crop_padding, MAX_CROP_PADDING), ("cutout", self.cutout, None)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (top is not None and value > top):
                bound = f"0..{top}" if top is not None else "a whole number >= 0"
                raise DassError(f"data.{name} must be {bound} (0 turns it off), got {value!r}")
        if not isinstance(self.flip, bool):
            raise DassError(f"data.flip must be true or false, got {self.flip!r}")


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one ``length`` x ``length`` square per image, centred anywhere (clipped at the border)."""
    if length <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=gen)
    cx = torch.randint(0, w, (n,), generator=gen)
    ys, xs = torch.arange(h), torch.arange(w)
    inside_y = (ys[None] >= (cy - length // 2)[:, None]) & (ys[None] < (cy - length // 2 + length)[:, None])
    inside_x = (xs[None] >= (cx - length // 2)[:, None]) & (xs[None] < (cx - length // 2 + length)[:, None])
    hole = inside_y[:, :, None] & inside_x[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)


def augment(x: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    x = random_crop(x, config.crop_padding, gen)
    if config.flip:
        x = random_flip(x, gen)
    return cutout(x, config.cutout, gen)
