import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from dass.data import AugmentConfig, TensorBatches, augment, cutout, load_dataset, random_flip, stream_generator
from dass.errors import DassError


def _write_cifar(folder, n_per_batch=5, batches=2):
    """Files in the official format: python pickles of dicts with 'data' (N x 3072, CHW) and 'labels'."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for b in range(1, batches + 1):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        with open(folder / f"data_batch_{b}", "wb") as fh:
            pickle.dump({b"batch_label": b"training batch", b"labels": labels, b"data": data}, fh, protocol=2)
        images.append((data, labels))
    test = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"labels": [1, 2, 3], b"data": test}, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"airplane", b"automobile"] + [b"x"] * 8}, fh, protocol=2)
    return images


def test_cifar_batches_loader(tmp_path):
    images = _write_cifar(tmp_path / "cifar-10-batches-py")
    for spec, data_dir in ((str(tmp_path / "cifar-10-batches-py"), None), ("cifar10", tmp_path)):
        ds = load_dataset(spec, data_dir)
        assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
        first = images[0][0][0]
        # HWC image: pixel (y, x) channel c is data[c * 1024 + y * 32 + x]
        assert ds.x_train[0, 5, 7, 2] == first[2 * 1024 + 5 * 32 + 7]
        assert list(ds.y_train[:5]) == images[0][1]
        assert ds.class_names[:2] == ["airplane", "automobile"]


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    folder = tmp_path / "evil"
    _write_cifar(folder)

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump({"data": Boom()}, fh)
    with pytest.raises(DassError, match="not a CIFAR-10 python batch"):
        load_dataset(str(folder))


def test_cifar_missing_gives_advice(tmp_path):
    with pytest.raises(DassError, match="data.download=true"):
        load_dataset("cifar10", tmp_path)


def _write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_idx_loader(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 7).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y, gz=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", x[:2])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", y[:2])
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (7, 28, 28, 1)
    assert np.array_equal(ds.x_train[..., 0], x) and np.array_equal(ds.y_train, y)


def test_npz_and_digits(cifar_subset):
    ds = load_dataset(str(cifar_subset))
    assert ds.x_train.shape == (4000, 32, 32, 3) and ds.num_classes == 10
    assert ds.subset(100).x_train.shape[0] == 100
    digits = load_dataset("digits")
    assert digits.x_train.shape[1:] == (8, 8, 1) and digits.x_train.max() == 255
    assert len(digits.x_train) + len(digits.x_test) == 1797


@pytest.mark.parametrize("spec", ["nope.npz", "no_such_dataset"])
def test_missing_dataset_is_a_clear_error(spec):
    with pytest.raises(DassError, match="does not exist|not found"):
        load_dataset(spec)


def test_augmentation_is_batched_and_deterministic():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    cfg = AugmentConfig(crop_padding=2, flip=True, cutout=2)
    a = augment(x, cfg, stream_generator(0, 1))
    b = augment(x, cfg, stream_generator(0, 1))
    assert torch.equal(a, b) and a.shape == x.shape
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    holes = cutout(x, 2, torch.Generator().manual_seed(0))
    assert all(1 <= int((holes[i] == 0).sum()) <= 4 for i in range(2))


def test_crop_is_a_shift_of_the_padded_image():
    x = torch.randn(4, 3, 8, 8)
    out = augment(x, AugmentConfig(crop_padding=2, flip=False), torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(4):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))


def test_batches_restart_mid_epoch():
    x, y = torch.randn(50, 1, 4, 4), torch.arange(50)
    tb = TensorBatches(x, y, 8, seed=3, stream=1, augment_config=AugmentConfig(1, True, 0))
    full = list(tb.batches(epoch=2))
    tail = list(tb.batches(epoch=2, start=4))
    assert len(full) == 7 and len(tail) == 3
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(full[0][1], list(tb.batches(epoch=3))[0][1])
