"""One data set-up for search and training: load, normalize, batch, from a run's data config and seed.

Streams (see :func:`~dass.data.loader.stream_generator`): 1 the training batches, 2 the search's
validation batches, 3 the evaluation pass; each batch's order and augmentation depend only on
``(seed, stream, epoch, step)``, which makes resuming exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .augment import AugmentConfig
from .config import DataConfig
from .datasets import ImageDataset, load_dataset
from .loader import Normalization, TensorBatches, split_train_val

EVAL_BATCH = 256   # evaluation passes use at least this batch (no gradients: memory is not the limit)


@dataclass
class RunData:
    """A run's batches and what the model must know about its inputs."""

    name: str
    input_shape: tuple[int, int, int]    # C, H, W
    num_classes: int
    normalization: Normalization
    train: TensorBatches                 # augmented, shuffled
    evaluation: TensorBatches            # in order, not augmented: the search's val split or the test set
    val: TensorBatches | None = None     # search only: the augmented validation batches of the upper level

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]


def load_data(d: DataConfig) -> ImageDataset:
    """The dataset a run's data config names (with the image-folder options), whole: no subset."""
    return load_dataset(d.dataset, d.data_dir, d.download, image_size=d.image_size, split_fraction=d.split_fraction)


def prepare_data(d: DataConfig, batch_size: int, seed: int, search: bool) -> RunData:
    """``search``: the training set split into train / val halves (``d.val_fraction``), normalization fitted on
    the train half; otherwise the whole training set trains and the test set evaluates.

    Bad data or settings raise :class:`DassError`: the dataset checks its own arrays (at least 2 training and
    1 test image, matching image sizes, labels 0..K-1), :func:`split_train_val` refuses a split that leaves
    either part empty, and a batch larger than its split is clipped to the split's size."""
    dataset = load_data(d).subset(d.subset)
    aug = AugmentConfig(d.crop_padding, d.flip, d.cutout)
    shape = (dataset.in_channels, *dataset.image_size)
    eval_batch = max(batch_size, EVAL_BATCH)
    if search:
        train_idx, val_idx = split_train_val(len(dataset.x_train), d.val_fraction, seed)
        norm = Normalization.fit(dataset.x_train[train_idx])
        x_all, y_all = norm(dataset.x_train), torch.from_numpy(dataset.y_train)
        t_idx, v_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        x_train, y_train, x_eval, y_eval = x_all[t_idx], y_all[t_idx], x_all[v_idx], y_all[v_idx]
        val = TensorBatches(x_eval, y_eval, batch_size, seed, stream=2, augment_config=aug)
    else:
        norm = Normalization.fit(dataset.x_train)
        x_train, y_train = norm(dataset.x_train), torch.from_numpy(dataset.y_train)
        x_eval, y_eval = norm(dataset.x_test), torch.from_numpy(dataset.y_test)
        val = None
    train = TensorBatches(x_train, y_train, batch_size, seed, stream=1, augment_config=aug)
    evaluation = TensorBatches(x_eval, y_eval, eval_batch, seed, stream=3, shuffle=False)
    return RunData(dataset.name, shape, dataset.num_classes, norm, train, evaluation, val)
