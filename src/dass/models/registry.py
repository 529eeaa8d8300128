"""Named models: hand-designed baselines and networks from genotypes, all on sparse layers.

``build_model("resnet18")``, ``build_model("darts_v2", init_channels=36, layers=20)``, or
``build_model("genotype", genotype=Genotype.load("genotype.json"))``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import DassError
from ..space.genotype import KNOWN_GENOTYPES, Genotype
from ..space.network import Network, NetworkConfig
from ..space.spaces import space_of
from .efficientnet import EfficientNetV2
from .mobilenet import MobileNetV2
from .resnet import ResNet18
from .vgg import VGG
from .wrn import wide_resnet

# Each takes (num_classes, in_channels, width); the wide ResNets are the five of the DASS authors' code.
BASELINES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": ResNet18,
    "mobilenet_v2": MobileNetV2,
    "vgg16": VGG,
    "efficientnet_v2_s": EfficientNetV2,
    **{f"wrn_{depth}_{k}": wide_resnet(depth, k) for depth, k in [(28, 10), (28, 4), (28, 1), (34, 10), (40, 2)]},
}
CELL_MODELS = {name.lower(): name for name in KNOWN_GENOTYPES}


def model_names() -> list[str]:
    return sorted(BASELINES) + sorted(CELL_MODELS) + ["genotype"]


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, *, width: float = 1.0,
                genotype: Genotype | None = None, init_channels: int = 36, layers: int = 20,
                auxiliary: bool = False, drop_path: float = 0.0, stem: str = "cifar") -> nn.Module:
    key = name.lower()
    if key in BASELINES:
        if stem != "cifar":
            raise DassError(f"stem {stem!r} is for the cell networks; {name!r} has its own stem")
        return BASELINES[key](num_classes=num_classes, in_channels=in_channels, width=width)
    if key in CELL_MODELS or key == "genotype":
        if key != "genotype":
            genotype = KNOWN_GENOTYPES[CELL_MODELS[key]]
        if genotype is None:
            raise DassError("model 'genotype' needs --genotype FILE (a genotype.json from `dass search`)")
        stem_option = {"stem": stem} if stem != "cifar" else {}   # DARTS's ImageNet stem (NetworkConfig.stem)
        config = NetworkConfig(init_channels, layers, auxiliary, drop_path, in_channels=in_channels,
                               num_classes=num_classes, **stem_option)
        if not isinstance(genotype, Genotype):   # another space's genotype (nb201): its space builds the network
            return space_of(genotype).build_network(genotype, config, in_channels, num_classes)
        return Network(genotype, config)
    raise DassError(f"unknown model {name!r}; known: {', '.join(model_names())}")
