"""Data-parallel runs with PyTorch's own engine (``torch.distributed``), launched by ``torchrun``.

Every rank builds the same global batch and trains on its shard; gradients of weights, scores and
architecture parameters are averaged over the ranks, and batch norm uses the statistics of the whole
global batch, so all ranks hold identical state after every step and a run of N ranks follows the
run of one process with the same global batch (up to the order of float sums).
"""

from .world import World, current_world, init_world, shutdown_world

__all__ = ["World", "current_world", "init_world", "shutdown_world"]
