"""A compact on-disk form of a pruned model: kept weights plus a bit mask per sparse layer.

A dense float32 weight costs 32 bits per entry; here a sparse layer costs 1 bit per entry plus
32 bits per kept weight, so a 99%-sparse layer shrinks about 25x. Scores are not stored: on
loading, each layer's scores are set to its 0/1 mask, which reproduces the mask exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DassError
from ..runtime.checkpoint import load_checkpoint, save_checkpoint
from .layers import sparse_layers


def pack_model(model: nn.Module) -> dict:
    sparse = dict(sparse_layers(model))
    layers, dense = {}, {}
    skip = set()
    for name, layer in sparse.items():
        mask = layer.mask().bool() if not layer.is_dense else torch.ones_like(layer.weight, dtype=torch.bool)
        bits = np.packbits(mask.flatten().numpy())
        layers[name] = {"shape": list(layer.weight.shape), "mask_bits": torch.from_numpy(bits),
                        "values": layer.weight.detach()[mask].clone(), "keep_ratio": layer.keep_ratio}
        skip.update({f"{name}.weight" if name else "weight", f"{name}.scores" if name else "scores",
                     f"{name}.keep_ratio_buf" if name else "keep_ratio_buf"})
    for key, value in model.state_dict().items():
        if key not in skip:
            dense[key] = value.clone()
    return {"sparse_layers": layers, "dense": dense}


def unpack_into(model: nn.Module, packed: dict) -> None:
    """Load a packed model into a freshly built model of the same architecture; a damaged file is a DassError."""
    try:
        _unpack(model, packed)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise DassError(f"the saved model is damaged or does not fit this architecture "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                        "train the run again or restore model_sparse.pt from a backup") from None


def _unpack(model: nn.Module, packed: dict) -> None:
    state = dict(packed["dense"])
    sparse = dict(sparse_layers(model))
    for name, entry in packed["sparse_layers"].items():
        if name not in sparse:
            raise DassError(f"packed model has sparse layer {name!r} that this architecture lacks")
        shape = tuple(int(s) for s in entry["shape"])
        if shape != tuple(sparse[name].weight.shape):
            raise ValueError(f"layer {name}: stored shape {shape}, the architecture has {tuple(sparse[name].weight.shape)}")
        n = int(np.prod(shape))
        bits = entry["mask_bits"]
        if not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8 or bits.numel() * 8 < n:
            raise ValueError(f"layer {name}: mask bits are not {n} bits of uint8")
        values = entry["values"]
        mask = torch.from_numpy(np.unpackbits(bits.numpy())[:n].astype(bool)).view(shape)
        if not isinstance(values, torch.Tensor) or not values.is_floating_point() or values.numel() != int(mask.sum()):
            raise ValueError(f"layer {name}: {int(mask.sum())} kept weights in the mask, "
                             f"{getattr(values, 'numel', lambda: '?')()} values stored")
        keep = float(entry["keep_ratio"])
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"layer {name}: keep ratio {keep} is not in (0, 1]")
        weight = torch.zeros(shape, dtype=values.dtype)
        weight[mask] = values.flatten()
        prefix = f"{name}." if name else ""
        state[prefix + "weight"] = weight
        state[prefix + "scores"] = mask.to(weight.dtype)
        state[prefix + "keep_ratio_buf"] = torch.tensor(keep, dtype=torch.float64)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DassError(f"packed model does not fit this architecture (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    for name, layer in sparse.items():
        if int(layer.mask().sum()) != int(packed["sparse_layers"][name]["values"].numel()):
            raise DassError(f"layer {name}: the stored mask does not match its keep ratio; the file is damaged")
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{key} holds NaN or infinite values")


def save_sparse_model(model: nn.Module, path: Path, meta: dict) -> None:
    save_checkpoint(Path(path), {"packed": pack_model(model), "meta": meta}, "sparse-model")


def load_sparse_model(path: Path) -> dict:
    return load_checkpoint(Path(path), "sparse-model")
