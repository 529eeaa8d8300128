"""Sparse building blocks with no NAS knowledge: score-masked layers and pruning-phase helpers."""

from .layers import GlobalMaskGroup, SparseConv2d, SparseLinear, SparseMixin, sparse_layers, topk_mask
from .phases import (
    LayerDensity, Phase, configure_phase, density_report, init_scores, overall_density,
    score_parameters, set_sparsity,
)

__all__ = [
    "GlobalMaskGroup", "SparseConv2d", "SparseLinear", "SparseMixin", "sparse_layers", "topk_mask",
    "LayerDensity", "Phase", "configure_phase", "density_report", "init_scores", "overall_density",
    "score_parameters", "set_sparsity",
]
