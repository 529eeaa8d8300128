"""Hand-designed baselines (CIFAR ResNet-18, MobileNet-v2, VGG-16) and the model registry."""

from .mobilenet import MobileNetV2
from .registry import BASELINES, build_model, model_names
from .resnet import ResNet18
from .vgg import VGG

__all__ = ["MobileNetV2", "ResNet18", "VGG", "BASELINES", "build_model", "model_names"]
