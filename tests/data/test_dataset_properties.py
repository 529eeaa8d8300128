"""Property tests: any arrays in a dataset .npz give a valid ImageDataset or a DassError, nothing else.

Valid means: uint8 N x H x W x C images with H, W, C >= 1, at least 2 training and 1 test image of the same
size, int64 labels in ``0..num_classes-1`` (one per image, equal to the labels given), ``num_classes`` at most
MAX_CLASSES with one class name each.
"""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dass.data import ImageDataset
from dass.data.datasets import MAX_CLASSES, load_npz
from dass.errors import DassError

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])

IMAGE_DTYPES = [np.int8, np.int64, np.uint16, np.float32, np.float64, np.bool_, "<U1"]
LABEL_DTYPES = [np.int32, np.uint8, np.uint64, np.int8, np.float32, np.float64, np.float16, np.bool_, "<U2", "S1",
                np.complex64]


def mostly(draw, good, *bad):
    """``good`` about four times in five, else one of ``bad`` (so that both valid and invalid inputs are common)."""
    return good if not bad or draw(st.integers(0, 4)) < 4 else draw(st.sampled_from(bad))


@st.composite
def images(draw, n, hwc):
    dtype = np.dtype(mostly(draw, np.uint8, *IMAGE_DTYPES))
    h, w, c = hwc
    shape = mostly(draw, (n, h, w, c), (n, h, w), (n, h), (n, h, w, c, 1), (n,))
    return draw(hnp.arrays(dtype, shape))


def _label_values(dtype: np.dtype):
    if dtype.kind == "f":
        special = [0.5, -0.0, float("nan"), float("inf"), 3.0] + ([1e9, 1e5] if dtype.itemsize >= 4 else [])
        return st.integers(-2, 11) | st.sampled_from(special)
    info = np.iinfo(dtype)
    special = [v for v in (10**9, MAX_CLASSES - 1, MAX_CLASSES, -(2**31), int(info.max)) if info.min <= v <= info.max]
    return st.integers(max(-2, int(info.min)), 11) | st.sampled_from(special)


@st.composite
def labels(draw, n):
    dtype = np.dtype(mostly(draw, np.int64, *LABEL_DTYPES))
    length = mostly(draw, n, max(n - 1, 0), n + 1)
    shape = mostly(draw, (length,), (length, 1), (length, 3), ())
    if dtype.kind in "iuf":
        values = mostly(draw, st.integers(0, 9), _label_values(dtype))
        return draw(hnp.arrays(dtype, shape, elements=values))
    return draw(hnp.arrays(dtype, shape))


@st.composite
def datasets(draw):
    """Tiny datasets, each part valid about four times in five."""
    n_train, n_test = mostly(draw, draw(st.integers(2, 4)), 0, 1), mostly(draw, draw(st.integers(1, 3)), 0)
    hwc = mostly(draw, tuple(draw(st.integers(1, 3)) for _ in range(3)), (0, 2, 2), (2, 0, 1), (2, 2, 0))
    test_hwc = mostly(draw, hwc, tuple(draw(st.integers(0, 3)) for _ in range(3)))
    arrays = {
        "x_train": draw(images(n_train, hwc)), "y_train": draw(labels(n_train)),
        "x_test": draw(images(n_test, test_hwc)), "y_test": draw(labels(n_test)),
    }
    names = mostly(draw, "none", "list", "list", "0-d", "2-d")
    if names == "list":
        arrays["class_names"] = np.array(draw(st.lists(st.text(max_size=3), max_size=14)), dtype="<U3")
    elif names != "none":
        arrays["class_names"] = np.array("a") if names == "0-d" else np.array([["a", "b"]])
    return arrays


def check(make, given_arrays=None) -> ImageDataset | None:
    try:
        ds = make()
    except DassError as exc:
        assert str(exc) and "\n" not in str(exc)
        event("DassError")
        return None
    event("valid")
    for split, least in (("train", 2), ("test", 1)):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert x.dtype == np.uint8 and x.ndim == 4 and min(x.shape[1:]) >= 1 and len(x) >= least
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert y.min() >= 0 and y.max() < ds.num_classes
        if given_arrays is not None:
            assert np.array_equal(y, given_arrays[f"y_{split}"].astype(np.float64))
            assert np.array_equal(x.reshape(given_arrays[f"x_{split}"].shape), given_arrays[f"x_{split}"])
    assert ds.x_test.shape[1:] == ds.x_train.shape[1:]
    assert ds.num_classes <= MAX_CLASSES and len(ds.class_names) == ds.num_classes
    assert all(isinstance(name, str) for name in ds.class_names)
    assert (ds.in_channels, *ds.image_size) == (ds.x_train.shape[3], ds.x_train.shape[1], ds.x_train.shape[2])
    return ds


@PROPERTY
@given(datasets())
def test_image_dataset_on_random_arrays(arrays):
    check(lambda: ImageDataset("d", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                               arrays.get("class_names")), arrays)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("npz")


@PROPERTY
@given(datasets(), st.booleans())
def test_load_npz_on_random_arrays(folder, arrays, compressed):
    path = folder / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    check(lambda: load_npz(path), arrays)


def _good_npz(compressed: bool) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buffer, x_train=rng.integers(0, 256, (3, 2, 2, 1), dtype=np.uint8), y_train=np.array([0, 1, 2]),
        x_test=rng.integers(0, 256, (2, 2, 2, 1), dtype=np.uint8), y_test=np.array([2, 0]),
        class_names=np.array(["a", "b", "c"]))
    return buffer.getvalue()


GOOD = {False: _good_npz(False), True: _good_npz(True)}


@st.composite
def corrupted(draw):
    raw = bytearray(GOOD[draw(st.booleans())])
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["truncate", "replace", "replace", "delete", "insert"]))
        i = draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "truncate":
            del raw[i:]
        elif action == "replace" and raw:
            raw[i] = draw(st.integers(0, 255))
        elif action == "delete":
            del raw[i:i + draw(st.integers(1, 8))]
        else:
            raw[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


@PROPERTY
@given(corrupted())
def test_load_npz_on_corrupted_files(folder, content):
    path = folder / "corrupt.npz"
    path.write_bytes(content)
    check(lambda: load_npz(path))
