"""One data set-up for search and training."""

import numpy as np

from dass.data import DataConfig, load_dataset, prepare_data


def test_search_splits_the_training_set_and_training_uses_the_test_set():
    config = DataConfig(dataset="digits", subset=200)
    search = prepare_data(config, batch_size=32, seed=0, search=True)
    train = prepare_data(config, batch_size=32, seed=0, search=False)
    dataset = load_dataset("digits").subset(200)
    assert search.input_shape == train.input_shape == (1, 8, 8)
    assert len(search.train.x) + len(search.val.x) == 200 and len(search.evaluation.x) == len(search.val.x)
    assert train.val is None and len(train.train.x) == 200 and len(train.evaluation.x) == len(dataset.x_test)
    # normalization is fitted on what trains: the search's train half, the whole training set otherwise
    assert not np.allclose(search.normalization.mean.numpy(), train.normalization.mean.numpy())
    assert search.evaluation.batch_size >= 256 or search.evaluation.batch_size == len(search.evaluation.x)
