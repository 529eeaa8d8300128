"""Datasets (named, .npz, CIFAR-10 batches, idx files, digits), batching and batched augmentation."""

from .augment import AugmentConfig, augment, cutout, random_crop, random_flip
from .datasets import ImageDataset, load_dataset
from .loader import Normalization, TensorBatches, split_train_val, stream_generator

__all__ = [
    "AugmentConfig", "augment", "cutout", "random_crop", "random_flip", "ImageDataset", "load_dataset",
    "Normalization", "TensorBatches", "split_train_val", "stream_generator",
]
