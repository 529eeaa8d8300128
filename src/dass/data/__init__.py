"""Datasets (named, .npz, CIFAR-10 batches, idx files, digits), batching and batched augmentation."""

from .augment import AugmentConfig, augment, cutout, random_crop, random_flip
from .config import DataConfig
from .datasets import ImageDataset, load_dataset
from .loader import Normalization, TensorBatches, split_train_val, stream_generator
from .setup import EVAL_BATCH, RunData, prepare_data

__all__ = [
    "AugmentConfig", "augment", "cutout", "random_crop", "random_flip", "ImageDataset", "load_dataset",
    "Normalization", "TensorBatches", "split_train_val", "stream_generator", "DataConfig", "EVAL_BATCH",
    "RunData", "prepare_data",
]
