"""What can be searched: primitive ops on sparse layers, genotypes, the DARTS supernet."""

from .genotype import DARTS_V1, DARTS_V2, KNOWN_GENOTYPES, Genotype, derive_genotype
from .ops import OPS, PRIMITIVES, build_op
from .supernet import MixedOp, SearchCell, Supernet, SupernetConfig, num_edges, reduction_layers

__all__ = [
    "DARTS_V1", "DARTS_V2", "KNOWN_GENOTYPES", "Genotype", "derive_genotype", "OPS", "PRIMITIVES",
    "build_op", "MixedOp", "SearchCell", "Supernet", "SupernetConfig", "num_edges", "reduction_layers",
]
