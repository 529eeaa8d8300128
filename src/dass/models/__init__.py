"""Hand-designed baselines (CIFAR ResNet-18, MobileNet-v2, VGG-16, wide ResNets, EfficientNetV2-S) and the
model registry."""

from .efficientnet import EfficientNetV2
from .mobilenet import MobileNetV2
from .registry import BASELINES, build_model, model_names
from .resnet import ResNet18
from .vgg import VGG
from .wrn import WideResNet

__all__ = ["EfficientNetV2", "MobileNetV2", "ResNet18", "VGG", "WideResNet", "BASELINES", "build_model", "model_names"]
