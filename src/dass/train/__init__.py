"""Final training: a network from a genotype or a baseline, pretrained, pruned and fine-tuned."""

from .config import TrainRunConfig, make_train_config
from .pipeline import TrainResult, TrainRun, build_network, train

__all__ = ["TrainRunConfig", "make_train_config", "TrainResult", "TrainRun", "build_network", "train"]
