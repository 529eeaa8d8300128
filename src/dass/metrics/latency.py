"""CPU inference latency: median of timed runs after warm-up, in inference mode."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.inference_mode()
def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1, warmup: int = 5,
                    repeats: int = 20, threads: int | None = 2) -> float:
    """Median seconds per forward pass of ``batch`` inputs."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    x = torch.randn(batch, *input_shape)
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
        torch.set_num_threads(previous)
    return statistics.median(times)
