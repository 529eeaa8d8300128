"""What can be searched: primitive ops on sparse layers, genotypes, supernets, and the registry of spaces."""

from .genotype import DARTS_V1, DARTS_V2, KNOWN_GENOTYPES, Genotype, derive_genotype, random_genotype
from .mixed import MixedOp, PartialChannels, partial_channel_variant
from .ops import OPS, PRIMITIVES, build_op
from .spaces import (SPACES, DartsSpace, SearchSpace, available_spaces, declared_space, get_space, load_genotype,
                     register_space, space_of)
from .nb201 import NB201_OPS, NB201Genotype, NB201Network, NB201Space, NB201Supernet, NB201SupernetConfig
from .supernet import SearchCell, Supernet, SupernetConfig, num_edges, reduction_layers

__all__ = [
    "DARTS_V1", "DARTS_V2", "KNOWN_GENOTYPES", "Genotype", "derive_genotype", "random_genotype", "MixedOp", "PartialChannels",
    "partial_channel_variant", "OPS", "PRIMITIVES", "build_op", "SPACES", "DartsSpace", "SearchSpace",
    "available_spaces", "get_space", "register_space", "SearchCell", "Supernet", "SupernetConfig", "num_edges",
    "reduction_layers", "declared_space", "load_genotype", "space_of", "NB201_OPS", "NB201Genotype", "NB201Network",
    "NB201Space", "NB201Supernet", "NB201SupernetConfig",
]
