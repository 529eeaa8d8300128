"""Bad datasets give a one-line DassError that says what is wrong and what to do, never a traceback."""

import gzip
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from dass.data import (AugmentConfig, DataConfig, ImageDataset, TensorBatches, load_dataset, prepare_data,
                       split_train_val)
from dass.data.datasets import MAX_CLASSES
from dass.errors import DassError

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
Y = np.array([0, 1, 2, 0, 1, 2])


def _npz(path, **override):
    arrays = dict(x_train=X, y_train=Y, x_test=X[:2], y_test=Y[:2])
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def _error(spec) -> str:
    with pytest.raises(DassError) as info:
        load_dataset(str(spec))
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_a_good_npz_loads(tmp_path):
    ds = load_dataset(str(_npz(tmp_path / "good.npz")))
    assert ds.x_train.shape == (6, 4, 4, 3) and ds.y_train.dtype == np.int64 and ds.num_classes == 3


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_npz(tmp_path, compressed):
    good = tmp_path / "good.npz"
    (np.savez_compressed if compressed else np.savez)(good, x_train=X, y_train=Y, x_test=X[:2], y_test=Y[:2])
    raw = good.read_bytes()
    for cut in (0, 3, 30, len(raw) // 3, len(raw) // 2, len(raw) - 22, len(raw) - 1):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        message = _error(tmp_path / "cut.npz")
        assert "cannot read" in message and "truncated or corrupt" in message


def test_corrupt_npz_bytes(tmp_path):
    raw = bytearray(_npz(tmp_path / "good.npz").read_bytes())
    raw[len(raw) // 4] ^= 0xFF   # inside x_train's data: the zip's CRC check fails
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    assert "corrupt" in _error(tmp_path / "bad.npz")


def test_npz_that_is_not_an_archive(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    assert "not a .npz archive" in _error(tmp_path / "text.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "truncated or corrupt" in _error(tmp_path / "empty.npz")
    with open(tmp_path / "one.npz", "wb") as fh:
        np.save(fh, X)
    assert "single array" in _error(tmp_path / "one.npz")
    (tmp_path / "dir.npz").mkdir()
    assert "is a folder" in _error(tmp_path / "dir.npz")


def test_object_arrays_are_refused(tmp_path):
    path = _npz(tmp_path / "obj.npz", y_train=np.array([0, "a", None, 1, 2, 3], dtype=object))
    assert "Python objects" in _error(path)


@pytest.mark.parametrize("override, message", [
    (dict(y_train=np.array([0, -1, 2, 0, 1, 2])), "negative label -1 at index 1"),
    (dict(y_train=np.array([0, np.nan, 2, 0, 1, 2])), "label nan at index 1"),
    (dict(y_test=np.array([0, np.inf])), "label inf"),
    (dict(y_train=Y + 0.5), "non-integer label 0.5"),
    (dict(y_train=np.eye(3)[Y]), r"1-D array of class indices; got shape \(6, 3\) — one-hot\? use y.argmax\(1\)"),
    (dict(y_train=Y[:, None]), r"reshape\(-1\)"),
    (dict(y_train=np.array(3)), "1-D array"),
    (dict(y_train=np.array([0, 10**9, 2, 0, 1, 2])), f"number of classes .* at most {MAX_CLASSES}"),
    (dict(y_train=np.array([0, 2**64 - 1, 2, 0, 1, 2], dtype=np.uint64)), "number of classes"),
    (dict(y_test=np.array([0, MAX_CLASSES])), "number of classes"),
    (dict(y_train=np.array(list("abcabc"))), r"dtype <U1; labels must be integer .* np.unique"),
    (dict(y_train=np.array([b"a"] * 6)), "dtype |S1"),
    (dict(y_train=Y.astype(bool)), r"dtype bool.*astype"),
    (dict(y_train=Y.astype(complex)), "dtype complex128"),
    (dict(y_train=Y[:5]), "6 images but y_train 5 labels"),
    (dict(x_train=X[:0], y_train=Y[:0]), "x_train holds 0 image.*at least 2"),
    (dict(x_train=X[:1], y_train=Y[:1]), "x_train holds 1 image.*at least 2"),
    (dict(x_test=X[:0], y_test=Y[:0]), "x_test holds 0 image.*at least 1"),
    (dict(x_test=X[:2, :, :, :1]), r"test images are 4 x 4 x 1 but training images are 4 x 4 x 3"),
    (dict(x_test=np.zeros((2, 5, 4, 3), np.uint8)), r"test images are 5 x 4 x 3 but training images are 4 x 4 x 3"),
    (dict(x_train=X.astype(np.float32)), r"dtype float32; images must be uint8.*np.round\(x \* 255\)"),
    (dict(x_train=X.astype(np.int64)), r"dtype int64; images must be uint8.*astype\(np.uint8\)"),
    (dict(x_train=X.reshape(6, -1)), r"shape \(6, 48\); images must be N x H x W"),
    (dict(x_train=X[..., None]), r"shape \(6, 4, 4, 3, 1\)"),
    (dict(x_train=X[..., :0], x_test=X[:2, ..., :0]), "channels must all be at least 1"),
    (dict(x_train=X[:, :0], x_test=X[:2, :0]), "height, width and channels"),
    (dict(class_names=np.array(["a", "b"])), "2 names but the labels go up to 2"),
    (dict(class_names=np.array("abc")), "class_names must be a 1-D array"),
    (dict(y_test=None), "lacks array"),
])
def test_bad_arrays(tmp_path, override, message):
    assert re.search(message, _error(_npz(tmp_path / "bad.npz", **override)))


@pytest.mark.parametrize("override, check", [
    (dict(y_train=Y.astype(np.float32)), lambda ds: ds.y_train.tolist() == Y.tolist()),
    (dict(y_train=Y.astype(np.uint8), y_test=np.array([0, 1], dtype=np.int16)), lambda ds: ds.num_classes == 3),
    (dict(x_train=np.zeros((2, 3, 3), np.uint8), y_train=Y[:2], x_test=np.zeros((1, 3, 3), np.uint8),
          y_test=Y[:1]), lambda ds: ds.x_train.shape == (2, 3, 3, 1)),
    (dict(x_train=np.zeros((6, 2, 2, 7), np.uint8), x_test=np.zeros((2, 2, 2, 7), np.uint8)),
     lambda ds: ds.in_channels == 7),
    (dict(class_names=np.array(list("abcde"))), lambda ds: ds.num_classes == 5 and ds.class_names[4] == "e"),
    (dict(class_names=np.array([b"x", b"y", b"z"])), lambda ds: ds.class_names == ["x", "y", "z"]),
])
def test_edge_cases_that_are_fine(tmp_path, override, check):
    ds = load_dataset(str(_npz(tmp_path / "fine.npz", **override)))
    assert check(ds) and ds.y_train.dtype == np.int64 and ds.x_train.dtype == np.uint8


def test_subset_semantics_are_kept(tmp_path):
    ds = load_dataset(str(_npz(tmp_path / "d.npz")))
    assert ds.subset(None) is ds and ds.subset(100) is ds and len(ds.subset(3).x_train) == 3
    for n in (1, 0, -5):
        with pytest.raises(DassError, match="--subset must be at least 2"):
            ds.subset(n)


@pytest.mark.parametrize("spec", [None, 3, ""])
def test_dataset_spec_of_the_wrong_type(spec):
    with pytest.raises(DassError, match="data.dataset must be"):
        load_dataset(spec)


def test_direct_construction_checks_types():
    with pytest.raises(DassError, match="NumPy array"):
        ImageDataset("d", [[[0]]], Y, X, Y)
    with pytest.raises(DassError, match="class_names must be a list"):
        ImageDataset("d", X, Y, X, Y, class_names="abc")


# -- search split, batching, augmentation settings ------------------------------------------------------------
@pytest.mark.parametrize("n, fraction, ok", [(2, 0.5, True), (3, 0.5, True), (2, 0.9, False), (4, 0.99, False)])
def test_search_split_is_never_empty(tmp_path, n, fraction, ok):
    path = _npz(tmp_path / "s.npz", x_train=X[:n], y_train=Y[:n])
    config = DataConfig(dataset=str(path), val_fraction=fraction)
    if ok:
        data = prepare_data(config, batch_size=64, seed=0, search=True)
        assert len(data.train.x) >= 1 and len(data.val.x) >= 1 and len(data.train) >= 1
        assert data.train.batch_size <= len(data.train.x)   # a batch larger than the split is clipped to it
    else:
        with pytest.raises(DassError, match="leave the train part empty"):
            prepare_data(config, batch_size=64, seed=0, search=True)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -1, float("nan"), True])
def test_val_fraction_out_of_range(fraction):
    with pytest.raises(DassError, match="val_fraction must be in"):
        split_train_val(10, fraction, 0)


def test_batches_and_augmentation_settings():
    x, y = torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long)
    for bad in (0, -1, 2.5):
        with pytest.raises(DassError, match="batch size"):
            TensorBatches(x, y, bad, 0, 1)
    with pytest.raises(DassError, match="at least one image"):
        TensorBatches(x[:0], y[:0], 4, 0, 1)
    for kwargs, name in ((dict(crop_padding=-1), "crop_padding"), (dict(crop_padding=10**6), "crop_padding"),
                         (dict(cutout=-2), "cutout"), (dict(flip="yes"), "flip")):
        with pytest.raises(DassError, match=name):
            AugmentConfig(**kwargs)


# -- other formats -----------------------------------------------------------------------------------------
def _idx(array):
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b[:6], "truncated"),                          # header cut inside the dimensions
    (lambda b: b[:-5], "truncated"),                         # payload cut
    (lambda b: gzip.compress(b)[:-12], "truncated or corrupt"),   # gzip stream cut
])
def test_truncated_idx_files(tmp_path, mangle, message):
    images = _idx(np.zeros((3, 4, 4), np.uint8))
    labels = _idx(np.array([0, 1, 2], np.uint8))
    mangled = mangle(images)
    name = "train-images-idx3-ubyte" + (".gz" if mangled[:2] == b"\x1f\x8b" else "")
    (tmp_path / name).write_bytes(mangled)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(labels)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(images)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(DassError, match=message):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("batch", [
    {b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]},          # labels of strings
    {b"data": np.zeros((2, 3072), np.uint8), b"labels": [[0, 1], [1, 0]]},    # one-hot labels
    {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},                 # too few labels
    {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]},                # not 32 x 32 x 3
    b"truncated",
])
def test_bad_cifar_batches(tmp_path, batch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2)[:20] if batch == b"truncated"
                                          else pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(good, protocol=2))
    with pytest.raises(DassError):
        load_dataset(str(folder))
