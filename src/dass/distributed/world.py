"""The process group of a run: rank, size, sharding and the collectives dass needs.

A single process is a world of size 1 whose collectives do nothing, so the training code calls them
unconditionally. ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``;
:func:`init_world` reads them and joins the group (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist

from ..errors import DassError

TIMEOUT = timedelta(minutes=10)   # a rank that died is noticed by its peers at the next collective (or by this)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # -- data -------------------------------------------------------------------------------------
    def shard(self, batch: Any) -> Any:
        """This rank's equal share of a global batch (tensors sliced along dim 0, nested tuples kept).

        A global batch whose size is not a multiple of the world size loses its last images (only an
        epoch's last, short batch can be such), so that every rank's mean loss weighs the same."""
        if not self.distributed:
            return batch
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.shard(b) for b in batch)
        if isinstance(batch, torch.Tensor):
            per = batch.shape[0] // self.size
            if per == 0:
                raise DassError(f"a batch of {batch.shape[0]} images cannot be shared by {self.size} ranks; use a "
                                f"batch size of at least {self.size} (a multiple of the number of ranks)")
            return batch[self.rank * per:(self.rank + 1) * per]
        return batch

    def part(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``tensor`` along dim 0 in an uneven split (for evaluation, where sums are exact)."""
        if not self.distributed:
            return tensor
        return torch.tensor_split(tensor, self.size)[self.rank]

    # -- collectives ------------------------------------------------------------------------------
    def average(self, tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """The mean over ranks of each tensor (None stays None: unused on every rank alike), in one all-reduce."""
        if not self.distributed:
            return list(tensors)
        present = [t for t in tensors if t is not None]
        if not present:
            return list(tensors)
        flat = torch.cat([t.reshape(-1).to(torch.float32) for t in present])
        _collective(dist.all_reduce, flat)
        flat.div_(self.size)
        out, offset = [], 0
        for t in tensors:
            if t is None:
                out.append(None)
                continue
            out.append(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
            offset += t.numel()
        return out

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.distributed:
            _collective(dist.all_reduce, tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any (e.g. "a signal asked us to stop")."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        _collective(dist.all_reduce, t)
        return bool(t.item() > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (e.g. the run folder name, which holds a timestamp)."""
        if not self.distributed:
            return obj
        box = [obj]
        _collective(dist.broadcast_object_list, box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            _collective(dist.barrier)


_WORLD = World()


def current_world() -> World:
    return _WORLD


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _collective(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise DassError(f"rank {_WORLD.rank} of {_WORLD.size} lost its peers ({str(exc).splitlines()[0][:120]}); "
                        "another rank stopped or was killed. Resume the run from its last checkpoint with "
                        "--resume RUN_DIR (any number of ranks)") from None


def init_world(device: torch.device) -> World:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for one process)."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        _WORLD = World()
        return _WORLD
    if not dist.is_available():
        raise DassError("this PyTorch build has no torch.distributed; run without torchrun")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)
    _WORLD = World(rank, size, local_rank, local_size)
    return _WORLD


def shutdown_world() -> None:
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()
