"""Latency-aware search: what every candidate op costs in the packed sparse runtime on this machine.

``search.cost=latency`` replaces the nonzero-MAC cost of each (edge, op) by the op's measured time in the
packed runtime at the target sparsity, for the input it sees in the supernet (channels, height, width,
stride): depthwise and pointwise layers on few channels cost activation traffic and barriers more than
multiply-adds, which MACs cannot see. Each op is pruned per layer by weight magnitude to the target sparsity
(its cost depends on how many weights it keeps, not on which), compiled alone, and timed with the runtime's
per-instruction profile (the time inside the runtime, without the Python call around it). The table is cached
per machine and thread count in ``~/.cache/dass/latency/`` (``dass profile-ops`` fills and prints it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..metrics.counting import forward_with_hooks
from ..native import RUNTIME
from ..runtime.files import atomic_write_text
from ..space.mixed import MixedOp
from ..space.supernet import Supernet
from ..sparse import init_scores, set_sparsity

CACHE_DIR = Path(os.environ.get("DASS_CACHE", Path.home() / ".cache" / "dass")) / "latency"


def key_sources() -> list[Path]:
    """The sources whose change invalidates a cached table: the runtime kernels and the deploy compiler."""
    from ..deploy import batched, compiler
    return [RUNTIME.source, Path(compiler.__file__), Path(batched.__file__)]


def machine_key(threads: int) -> str:
    """Which cached table applies: CPU model, core count, dass version, the runtime kernels' and the compiler's
    sources (a kernel change moves every op's time, a compiler change how an op runs: composing a separable conv's
    halves made it one instruction) and thread count."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    digest = hashlib.sha256()
    try:
        for source in key_sources():
            digest.update(source.read_bytes())
        kernels = digest.hexdigest()[:16]
    except OSError:
        kernels = "?"
    text = f"{cpu}|{os.cpu_count()}|{platform.machine()}|{__version__}|{kernels}|t{threads}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LatencyTable:
    """Seconds per call of ops in the packed runtime, by (op, C, H, W, stride, sparsity), cached on disk."""

    def __init__(self, threads: int = 2, path: Path | None = None, repeats: int = 30):
        self.threads = threads
        self.repeats = repeats
        self.path = path or CACHE_DIR / f"{machine_key(threads)}.json"
        try:
            self.entries: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.measured = 0   # entries measured (not found in the cache) since loading

    @staticmethod
    def key(op: str, shape: tuple[int, int, int], stride: int, sparsity: float) -> str:
        c, h, w = shape
        return f"{op}|{c}x{h}x{w}|s{stride}|{sparsity:.4f}"

    def seconds(self, name: str, module: nn.Module, shape: tuple[int, int, int], stride: int, sparsity: float) -> float:
        """The op's time on an input of ``shape`` (C, H, W), measured once and then read from the table."""
        key = self.key(name, shape, stride, sparsity)
        if key not in self.entries:
            self.entries[key] = self._measure(module, shape, sparsity)
            self.measured += 1
        return self.entries[key]

    def _measure(self, module: nn.Module, shape: tuple[int, int, int], sparsity: float) -> float:
        from ..deploy.compiler import compile_model
        from ..deploy.packed import PackedModel

        op = nn.Sequential(copy.deepcopy(module)).eval()   # (as a submodule, as in a network)
        for p in op.parameters():
            p.requires_grad_(False)
        init_scores(op)
        set_sparsity(op, sparsity)
        packed = PackedModel(compile_model(op, shape), threads=self.threads)
        if len(packed.program.instructions) == 0:
            return 0.0   # the identity (skip connection at stride 1) costs nothing
        x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        profile = packed.profile(x, repeats=self.repeats)
        return float(sum(v["seconds"] for v in profile.values()))

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.entries, indent=0, sort_keys=True) + "\n")


@torch.no_grad()
def edge_op_latencies(model: Supernet, input_shape: tuple[int, int, int], sparsity: float,
                      table: LatencyTable) -> dict[str, torch.Tensor]:
    """Seconds per sample of each (edge, op) in the packed runtime, summed over the cells of each kind (the same
    layout as :func:`dass.search.cost.edge_op_costs`); ``none`` costs 0."""
    k, n = model.alphas_normal.shape
    costs = {"normal": torch.zeros(k, n, dtype=torch.float64), "reduce": torch.zeros(k, n, dtype=torch.float64)}
    seen: list[tuple[str, int, MixedOp, tuple[int, int, int]]] = []
    hooks = {}
    for i, cell in enumerate(model.cells):
        kind = "reduce" if cell.reduction else "normal"
        for e, edge in enumerate(cell.edges):
            def hook(mod: nn.Module, inputs, output, kind=kind, e=e) -> None:
                x = inputs[0]
                seen.append((kind, e, mod, (mod.op_channels(x.shape[1]), x.shape[2], x.shape[3])))

            hooks[edge] = hook
    forward_with_hooks(model, input_shape, hooks)
    for kind, e, mixed, shape in seen:
        for j, (name, op) in enumerate(zip(mixed.op_names, mixed.ops)):
            if name == "none":
                continue
            costs[kind][e, j] += table.seconds(name, op, shape, mixed.stride, sparsity)
    if table.measured:
        table.save()
    return costs
