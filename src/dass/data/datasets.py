"""Image classification datasets by name or path, held in memory as uint8 NHWC arrays.

Supported sources:

* ``digits``: scikit-learn's bundled 8x8 digits (real data that ships with a dependency; offline);
* ``cifar10``: the official python pickle batches (``cifar-10-batches-py``) in ``data_dir``,
  downloaded there with a checksum check when ``download`` is set and the network allows;
* ``mnist`` / ``fashion_mnist``: MNIST-style idx files (optionally gzipped) or a ``.npz`` in ``data_dir``;
* a path to a ``.npz`` with ``x_train, y_train, x_test, y_test`` (optional ``class_names``);
* a path to a folder holding CIFAR batches or idx files;
* a path to a folder of PNG/JPEG images, one subfolder per class (``train/`` + ``val/`` or ``test/``, one set
  split by ``split_fraction``, or Tiny-ImageNet's layout); decoded once, then cached (:func:`load_image_folder`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import sys
import tarfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DassError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
NAMED = ("digits", "cifar10", "mnist", "fashion_mnist")


MAX_CLASSES = 100_000        # labels are class indices 0..K-1; a larger K is a labelling mistake, not a dataset
MIN_TRAIN, MIN_TEST = 2, 1   # the fewest images each split may have


def _one_line(exc: BaseException, with_type: bool = False) -> str:
    """An exception's message on one line, at most 200 characters (``with_type``: prefixed by its class)."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if with_type and text else text or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_images(name: str, split: str, x) -> np.ndarray:
    """``x`` as uint8 N x H x W x C (a 3-D N x H x W array gains C = 1); raises DassError with advice."""
    what = f"dataset {name}: x_{split}"
    if not isinstance(x, np.ndarray):
        raise DassError(f"{what} must be a NumPy array of images, got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise DassError(f"{what} has shape {x.shape}; images must be N x H x W (grayscale) or N x H x W x C "
                        "(channels last)")
    if x.dtype != np.uint8:
        if x.dtype.kind == "f":
            hint = ("convert floats in [0, 1] with np.round(x * 255).astype(np.uint8), "
                    "floats in [0, 255] with np.round(x).astype(np.uint8)")
        elif x.dtype.kind in "iu":
            hint = "convert pixel values in 0..255 with x.astype(np.uint8)"
        else:
            hint = "store the pixels as uint8 values 0..255"
        raise DassError(f"{what} has dtype {x.dtype}; images must be uint8 (0..255): {hint}")
    if x.ndim == 3:
        x = x[..., None]
    if 0 in x.shape[1:]:
        raise DassError(f"{what} has shape {x.shape}: height, width and channels must all be at least 1 "
                        "(images are N x H x W x C, channels last)")
    need = MIN_TRAIN if split == "train" else MIN_TEST
    if len(x) < need:
        raise DassError(f"{what} holds {len(x)} image(s); the {split} split needs at least {need}")
    return x


def _check_labels(name: str, split: str, y, n: int) -> np.ndarray:
    """``y`` as int64 class indices in 0..MAX_CLASSES-1, one per image; raises DassError with advice."""
    what = f"dataset {name}: y_{split}"
    if not isinstance(y, np.ndarray):
        raise DassError(f"{what} must be a NumPy array of class indices, got {type(y).__name__}")
    if y.ndim != 1:
        got = f"shape {y.shape}" if y.ndim else f"a single value {y!r}"
        hint = ""
        if y.ndim == 2:
            hint = " — one-hot? use y.argmax(1)" if y.shape[1] > 1 else "; use y.reshape(-1)"
        raise DassError(f"{what}: labels must be a 1-D array of class indices; got {got}{hint}")
    if len(y) != n:
        raise DassError(f"dataset {name}: x_{split} has {n} images but y_{split} {len(y)} labels")
    kind = y.dtype.kind
    if kind == "f":
        y = y.astype(np.float64)   # compare with MAX_CLASSES exactly (it overflows float16)
        bad = ~np.isfinite(y)
        if bad.any():
            i = int(np.argmax(bad))
            raise DassError(f"{what} has label {y[i]} at index {i}; labels must be class indices 0..K-1")
        fractional = y != np.floor(y)
        if fractional.any():
            i = int(np.argmax(fractional))
            raise DassError(f"{what} has non-integer label {y[i]} at index {i}; labels must be whole class indices "
                            "0..K-1 (float labels are accepted only when all are whole numbers)")
    elif kind not in "iu":
        hint = ("map class names to indices with class_names, y = np.unique(y, return_inverse=True)"
                if kind in "USO" else "store them as integers, e.g. y.astype(np.int64)")
        raise DassError(f"{what} has dtype {y.dtype}; labels must be integer class indices 0..K-1: {hint}")
    if y.min() < 0:
        i = int(np.argmax(y < 0))
        raise DassError(f"{what} has negative label {y[i]} at index {i}; labels must be class indices 0..K-1")
    if y.max() >= MAX_CLASSES:
        i = int(np.argmax(y >= MAX_CLASSES))
        raise DassError(f"{what} has label {y[i]} at index {i}, but the number of classes (max label + 1) must be "
                        f"at most {MAX_CLASSES}; relabel the classes as 0..K-1")
    return y.astype(np.int64)


def _hwc(x: np.ndarray) -> str:
    return " x ".join(str(d) for d in x.shape[1:])


def _check_names(name: str, names, num_classes: int) -> list[str]:
    if names is None:
        names = []
    if isinstance(names, np.ndarray):
        if names.ndim != 1:
            raise DassError(f"dataset {name}: class_names must be a 1-D array of names, got shape {names.shape}")
        names = names.tolist()
    if not isinstance(names, (list, tuple)):
        raise DassError(f"dataset {name}: class_names must be a list of names, got {type(names).__name__}")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    if len(names) > MAX_CLASSES:
        raise DassError(f"dataset {name}: class_names lists {len(names)} names; at most {MAX_CLASSES} classes")
    if names and len(names) < num_classes:
        raise DassError(f"dataset {name}: class_names lists {len(names)} names but the labels go up to "
                        f"{num_classes - 1}; give one name per class 0..{num_classes - 1}")
    return names


@dataclass
class ImageDataset:
    """Train and test images (uint8, N x H x W x C) with int64 labels in ``0..num_classes-1``.

    Construction checks everything (shapes, dtypes, label values) and raises :class:`DassError` with advice.
    ``class_names``, when given, define the classes (there may be more names than labels in use).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = _check_images(self.name, split, getattr(self, f"x_{split}"))
            y = _check_labels(self.name, split, getattr(self, f"y_{split}"), len(x))
            setattr(self, f"x_{split}", x)
            setattr(self, f"y_{split}", y)
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise DassError(f"dataset {self.name}: test images are {_hwc(self.x_test)} but training images are "
                            f"{_hwc(self.x_train)} (H x W x C); both splits need the same size and channel count")
        labelled = int(max(self.y_train.max(), self.y_test.max())) + 1
        self.class_names = _check_names(self.name, self.class_names, labelled)
        if not self.class_names:
            self.class_names = [str(i) for i in range(labelled)]

    @property
    def num_classes(self) -> int:
        return max(len(self.class_names), int(max(self.y_train.max(), self.y_test.max())) + 1)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[1]), int(self.x_train.shape[2])

    def subset(self, n: int | None) -> "ImageDataset":
        """The first ``n`` training images (a quick trial); the test split is kept whole."""
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise DassError(f"--subset must be a whole number of images, got {n!r}")
        if n >= len(self.x_train):
            return self
        if n < 2:
            raise DassError(f"--subset must be at least 2 images, got {n}")
        return ImageDataset(self.name, self.x_train[:n], self.y_train[:n], self.x_test, self.y_test, self.class_names)


def load_dataset(spec: str, data_dir: str | Path | None = None, download: bool = False, *,
                 image_size: int | None = None, split_fraction: float = 0.2) -> ImageDataset:
    """Load a dataset by name (see module doc) or by path; raises :class:`DassError` with advice.

    ``image_size`` and ``split_fraction`` apply to image folders (:func:`load_image_folder`); other sources keep
    their arrays as they are, so an ``image_size`` that differs from their size is refused."""
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise DassError(f"data.dataset must be a dataset name or a path, got {spec!r}; "
                        f"give a .npz file, a folder, or one of {', '.join(NAMED)}")
    if data_dir is not None and not isinstance(data_dir, (str, Path)):
        raise DassError(f"data.data_dir must be a folder path, got {data_dir!r}")
    _check_folder_options(image_size, split_fraction)
    spec = str(spec)
    path = Path(spec).expanduser()
    if spec not in NAMED and path.suffix != ".npz" and path.is_dir() and not (path / "data_batch_1").exists() \
            and not (path / CIFAR10_FOLDER).exists() and not _find_idx(path, "train", "images"):
        return load_image_folder(path, image_size, split_fraction)
    dataset = _load_arrays(spec, path, data_dir, download)
    if image_size is not None and dataset.image_size != (image_size, image_size):
        h, w = dataset.image_size
        raise DassError(f"data.image_size={image_size} applies to folders of images, but {spec} holds {h} x {w} "
                        "arrays; unset data.image_size (or resize the arrays yourself)")
    return dataset


def _load_arrays(spec: str, path: Path, data_dir: str | Path | None, download: bool) -> ImageDataset:
    if path.suffix == ".npz":
        return load_npz(path)
    if spec in NAMED:
        root = Path(data_dir).expanduser() if data_dir else None
        if spec == "digits":
            return load_digits()
        if spec == "cifar10":
            return load_cifar10(root or Path.home() / ".cache" / "dass", download)
        return load_mnist_like(spec, root)
    if path.is_dir():
        if (path / "data_batch_1").exists() or (path / CIFAR10_FOLDER).exists():
            return load_cifar10(path, download=False)
        return load_idx_folder(path, path.name)
    if path.exists():
        raise DassError(f"don't know how to read {path}: give a .npz, a folder of class folders of images, of "
                        f"CIFAR-10 batches or of idx files, or one of the names {', '.join(NAMED)}")
    raise DassError(f"dataset {spec!r} not found: give a path to a .npz file or folder, or one of the names "
                    f"{', '.join(NAMED)} (with --set data.data_dir=FOLDER for cifar10/mnist/fashion_mnist)")


# -- .npz ----------------------------------------------------------------------------------
def load_npz(path: Path) -> ImageDataset:
    """A dataset from a ``.npz`` with ``x_train, y_train, x_test, y_test`` (optional ``class_names``)."""
    path = Path(path)
    if path.is_dir():
        raise DassError(f"dataset {path} is a folder, not a .npz file; give the .npz file itself")
    if not path.is_file():
        raise DassError(f"dataset file {path} does not exist; check the path (the shared data lives in ../shared/data)")
    arrays: dict[str, np.ndarray] = {}
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise DassError(f"{path} holds a single array, not a dataset; save one with np.savez(path, "
                            "x_train=..., y_train=..., x_test=..., y_test=...)")
        with data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data.files]
            if missing:
                raise DassError(f"{path} lacks array(s) {', '.join(missing)}; a dataset .npz needs "
                                "x_train, y_train, x_test, y_test (uint8 images N x H x W x C, integer labels)")
            for key in ("x_train", "y_train", "x_test", "y_test", "class_names"):
                if key in data.files:
                    arrays[key] = data[key]
    except DassError:
        raise
    except MemoryError:
        raise DassError(f"{path} is too large to load into memory (or its array headers are corrupt)") from None
    except ValueError as exc:
        if "object arrays" in str(exc).lower():
            raise DassError(f"{path} holds Python objects (object arrays), which dass does not load; save plain "
                            "numeric arrays: uint8 images and integer labels (class_names as a string array)") from None
        if "pickled" in str(exc):  # neither a zip nor a .npy: NumPy assumes a pickle, which it may not load
            raise DassError(f"cannot read {path}: not a .npz archive (truncated or corrupt, or another format); "
                            "re-create it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
                            ) from None
        raise DassError(f"cannot read {path} as a .npz dataset ({_one_line(exc)}); the file is truncated or corrupt: "
                        "re-create or re-download it") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise DassError(f"cannot read {path}: {exc.strerror}; check the file's permissions") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt archives raise BadZipFile, zlib.error, EOFError...
        raise DassError(f"cannot read {path} as a .npz dataset ({_one_line(exc, with_type=True)}); "
                        "the file is truncated or corrupt: re-create or re-download it") from None
    return ImageDataset(path.stem, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                        arrays.get("class_names"))


# -- digits ----------------------------------------------------------------------------------
def load_digits(test_fraction: float = 1 / 6) -> ImageDataset:
    """scikit-learn's 8x8 digits, rescaled from 0..16 to 0..255, with a fixed stratified-free split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return ImageDataset("digits", x[train], y[train], x[test], y[test], [str(i) for i in range(10)])


# -- CIFAR-10 python batches -------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches contain (dicts, lists, bytes, numpy arrays): never runs code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            raw = _SafeUnpickler(fh, encoding="latin1").load()
    except OSError as exc:
        raise DassError(f"cannot read {path}: {exc.strerror or _one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle can raise almost anything; none of it runs code
        raise DassError(f"{path} is not a CIFAR-10 python batch ({_one_line(exc)}); re-download the dataset") from None
    if not isinstance(raw, dict):
        raise DassError(f"{path} is not a CIFAR-10 python batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _batch_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_batch(path)
    if "data" not in batch or "labels" not in batch:
        raise DassError(f"{path} lacks 'data' or 'labels'; is it a CIFAR-10 python batch?")
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch["labels"])
    except Exception as exc:  # noqa: BLE001 - ragged lists and the like
        raise DassError(f"{path}: 'data' or 'labels' is not an array ({_one_line(exc)}); "
                        "re-download the dataset") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DassError(f"{path}: expected uint8 data of shape N x 3072, got {data.dtype} {data.shape}; "
                        "re-download the dataset")
    if labels.ndim != 1 or len(labels) != len(data):
        raise DassError(f"{path}: expected one label per image ({len(data)}), got labels of shape {labels.shape}; "
                        "re-download the dataset")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def load_cifar10(root: Path, download: bool = False) -> ImageDataset:
    folder = root / CIFAR10_FOLDER if (root / CIFAR10_FOLDER).is_dir() else root
    if not (folder / "data_batch_1").exists():
        if not download:
            raise DassError(f"CIFAR-10 batches not found in {root}; put cifar-10-batches-py there, "
                            "or add --set data.download=true to fetch it (needs network)")
        download_cifar10(root)
        folder = root / CIFAR10_FOLDER
    train_files = sorted(folder.glob("data_batch_*"))
    if not (folder / "test_batch").exists():
        raise DassError(f"{folder} has no test_batch; the CIFAR-10 folder is incomplete, re-download it")
    xs, ys = zip(*(_batch_arrays(f) for f in train_files))
    x_test, y_test = _batch_arrays(folder / "test_batch")
    names: list[str] = []
    if (folder / "batches.meta").exists():
        label_names = _read_batch(folder / "batches.meta").get("label_names", [])
        if not isinstance(label_names, (list, tuple)):
            raise DassError(f"{folder / 'batches.meta'}: label_names is not a list; re-download the dataset")
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in label_names]
    return ImageDataset("cifar10", np.concatenate(xs), np.concatenate(ys), x_test, y_test, names)


def download_cifar10(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DassError(f"cannot create {root} for CIFAR-10 ({exc.strerror or _one_line(exc)}); "
                        "set --set data.data_dir=FOLDER to a writable folder") from None
    try:
        with urllib.request.urlopen(CIFAR10_URL, timeout=60) as response:
            blob = response.read()
    except OSError as exc:
        raise DassError(f"could not download CIFAR-10 ({exc}); copy cifar-10-batches-py into {root} by hand") from None
    digest = hashlib.md5(blob).hexdigest()
    if digest != CIFAR10_MD5:
        raise DassError(f"downloaded CIFAR-10 has md5 {digest}, expected {CIFAR10_MD5}; try again or copy it by hand")
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            tar.extractall(root, filter="data")
    except OSError as exc:
        raise DassError(f"could not unpack CIFAR-10 into {root} ({exc.strerror or _one_line(exc)}); "
                        "check that the folder is writable and has ~200 MB free") from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DassError(f"the downloaded CIFAR-10 archive is corrupt ({_one_line(exc)}); try again") from None


# -- MNIST-style idx ---------------------------------------------------------------------------
def _find_idx(folder: Path, split: str, kind: str) -> Path | None:
    prefix = "train" if split == "train" else "t10k"
    suffix = "idx3-ubyte" if kind == "images" else "idx1-ubyte"
    for name in (f"{prefix}-{kind}-{suffix}", f"{prefix}-{kind}.{suffix}"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST format): big-endian header, magic 0x0000 08 NDIM, uint8 payload."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DassError(f"cannot read {path}: {exc.strerror or _one_line(exc)}") from None
    except (EOFError, zlib.error) as exc:
        raise DassError(f"{path} is truncated or corrupt ({_one_line(exc)}); re-download it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DassError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DassError(f"{path} is truncated: its header names {ndim} dimensions but the file ends first")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise DassError(f"{path} is truncated: header says {dims}, found {payload.size} values")
    return payload.reshape(dims)


def load_idx_folder(folder: Path, name: str) -> ImageDataset:
    files = {(s, k): _find_idx(folder, s, k) for s in ("train", "test") for k in ("images", "labels")}
    missing = [f"{s} {k}" for (s, k), p in files.items() if p is None]
    if missing:
        raise DassError(f"{folder} lacks idx file(s) for: {', '.join(missing)}")
    arrays = {key: read_idx(p) for key, p in files.items()}  # type: ignore[arg-type]
    return ImageDataset(name, arrays["train", "images"], arrays["train", "labels"],
                        arrays["test", "images"], arrays["test", "labels"])


def load_mnist_like(name: str, root: Path | None) -> ImageDataset:
    if root is None:
        raise DassError(f"{name} needs --set data.data_dir=FOLDER holding {name}.npz or its idx files")
    if (root / f"{name}.npz").is_file():
        return load_npz(root / f"{name}.npz")
    for folder in (root / name, root):
        if _find_idx(folder, "train", "images"):
            return load_idx_folder(folder, name)
    raise DassError(f"no {name}.npz or idx files (train-images-idx3-ubyte...) found in {root}")


# -- folders of images, one subfolder per class ---------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
SPLIT_SEED = 0               # the held-out split of a single set of class folders is fixed, whatever the run's seed
AUTO_SIZE_MAX = 256          # data.image_size unset: a shared size up to this side is kept ...
AUTO_SIZE_FALLBACK = 32      # ... otherwise (mixed or large images) every image becomes 32 x 32, as CIFAR
MAX_IMAGE_SIDE = 4096
PROGRESS_MIN = 1000          # folders of at least this many images show a progress bar while decoding
FOLDER_CACHE_VERSION = 1


@dataclass
class FolderListing:
    """What an image folder holds: its layout, classes (sorted folder names) and labelled files per split."""

    root: Path
    layout: str                         # "train-val" | "single" | "tiny-imagenet"
    class_names: list[str]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    test_dir: str = ""                  # the folder that became the test split ("val" or "test"), if any


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """The visible subfolders and image files directly in ``folder``, each sorted by name."""
    try:
        with os.scandir(folder) as it:
            entries = [(e.name, e.is_dir()) for e in it if not e.name.startswith(".")]
    except OSError as exc:
        raise DassError(f"cannot list {folder}: {exc.strerror or _one_line(exc)}; check the folder's permissions"
                        ) from None
    return (sorted(n for n, d in entries if d), sorted(n for n, d in entries if not d and _is_image(n)))


def _images_under(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (any depth, hidden files and folders skipped), sorted by path."""
    found = []
    for top, dirs, files in os.walk(folder, onerror=None):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(top) / f for f in files if _is_image(f))
    return sorted(found)


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """``{class name: images}`` for the class folders in ``folder``; DassError for loose images or empty classes."""
    dirs, images = _entries(folder)
    where = f"{folder}"
    if images:
        if not dirs:
            raise DassError(f"{where} holds images but no class folders ({images[0]}, ...); put the images in one "
                            "subfolder per class (the folder name is the class name)")
        raise DassError(f"{where} mixes layouts: images ({images[0]}, ...) beside class folders ({dirs[0]}, ...); "
                        "move every image into its class's folder")
    if not dirs:
        raise DassError(f"{where} is empty: put one subfolder of images per class in it")
    classes = {}
    for name in dirs:
        files = _images_under(folder / name)
        if not files:
            raise DassError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES[:3])}...); "
                            "add its images or remove the folder")
        classes[name] = files
    return classes


def _held_out_split(classes: dict[str, list[Path]], fraction: float) -> tuple[list, list]:
    """Per class, a fixed random ``fraction`` of the images (at least one when a class has two or more) is held
    out as the test split; the order depends on :data:`SPLIT_SEED` only, never on the run's seed."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label, name in enumerate(sorted(classes)):
        files = classes[name]
        n_test = min(max(int(round(len(files) * fraction)), 1), len(files) - 1) if len(files) > 1 else 0
        held = set(rng.permutation(len(files))[:n_test].tolist())
        for i, f in enumerate(files):
            (test if i in held else train).append((f, label))
    if not test:
        raise DassError("every class folder holds a single image, so none can be held out for testing; add images, "
                        "or give train/ and val/ (or test/) folders")
    return train, test


def _tiny_imagenet_val(root: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    """Tiny-ImageNet's val split: ``val/images/*`` labelled by ``val/val_annotations.txt`` (file, wnid, box)."""
    notes = root / "val" / "val_annotations.txt"
    try:
        lines = notes.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DassError(f"cannot read {notes} ({_one_line(exc)}); restore the file from the dataset archive") from None
    folder = root / "val" / "images"
    labels: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DassError(f"{notes} line {number} should be 'FILE<TAB>WNID ...', got {line.strip()!r}")
        name, wnid = fields[0], fields[1]
        if wnid not in index:
            raise DassError(f"{notes} line {number}: class {wnid} (for {name}) has no folder in train/; every val "
                            "class needs training images")
        labels[name] = index[wnid]
    files = _images_under(folder)
    if not files:
        raise DassError(f"{folder} holds no images; restore Tiny-ImageNet's val/images folder")
    present = {f.relative_to(folder).as_posix() for f in files}
    missing = sorted(set(labels) - present)
    if missing:
        raise DassError(f"{notes} lists {len(missing)} image(s) missing from {folder} ({missing[0]}, ...); "
                        "restore them or their lines")
    unlisted = sorted(present - set(labels))
    if unlisted:
        raise DassError(f"{folder / unlisted[0]} is not listed in {notes} (nor {len(unlisted) - 1} other image(s)); "
                        "add a line 'FILE<TAB>WNID' for each, or remove them")
    return [(f, labels[f.relative_to(folder).as_posix()]) for f in files]


def list_image_folder(root: Path, split_fraction: float = 0.2) -> FolderListing:
    """The labelled files of an image folder, in one of three layouts (see :func:`load_image_folder`)."""
    _check_folder_options(None, split_fraction)
    root = Path(root)
    dirs, images = _entries(root)
    splits = [d for d in dirs if d in ("train", "val", "test")]
    others = [d for d in dirs if d not in ("train", "val", "test")]
    if not dirs:
        if images:
            _class_folders(root)   # raises: images but no class folders
        raise DassError(f"{root} holds no images, class folders, CIFAR-10 batches or idx files; give a folder with "
                        "one subfolder of images per class (or train/ and val/ folders holding those)")
    if splits and others:
        raise DassError(f"{root} mixes layouts: {'/, '.join(splits)}/ beside other folders ({', '.join(others[:3])}"
                        f"{', ...' if len(others) > 3 else ''}); put every class folder under train/ (and val/ or "
                        "test/), or remove train/, val/ and test/ to split one set of class folders")
    if splits and "train" not in splits:
        raise DassError(f"{root} has {'/ and '.join(splits)}/ but no train/; put the training images' class folders "
                        "in train/")
    if images:
        raise DassError(f"{root} mixes layouts: images ({images[0]}, ...) beside folders; move every image into "
                        "its class's folder")
    if not splits:   # one set of class folders, split by fraction
        classes = _class_folders(root)
        train, test = _held_out_split(classes, float(split_fraction))
        return FolderListing(root, "single", sorted(classes), train, test)
    train_classes = _class_folders(root / "train")
    names = sorted(train_classes)
    index = {name: i for i, name in enumerate(names)}
    train = [(f, index[name]) for name in names for f in train_classes[name]]
    val = root / "val"
    if (val / "val_annotations.txt").is_file() and (val / "images").is_dir():
        return FolderListing(root, "tiny-imagenet", names, train, _tiny_imagenet_val(root, index), "val")
    test_dir = "val" if "val" in splits else "test" if "test" in splits else ""
    if not test_dir:   # train/ alone: split it like a single set of class folders
        train, test = _held_out_split(train_classes, float(split_fraction))
        return FolderListing(root, "single", names, train, test)
    test_classes = _class_folders(root / test_dir)
    unknown = sorted(set(test_classes) - set(index))
    if unknown:
        raise DassError(f"{test_dir}/ has class folder(s) that train/ lacks ({', '.join(unknown[:3])}"
                        f"{', ...' if len(unknown) > 3 else ''}); every {test_dir} class needs training images: "
                        "rename or remove them")
    test = [(f, index[name]) for name in sorted(test_classes) for f in test_classes[name]]
    return FolderListing(root, "train-val", names, train, test, test_dir)


def _bad_image(path: Path, exc: BaseException) -> DassError:
    if isinstance(exc, PermissionError):
        return DassError(f"cannot read image {path}: permission denied; check the file's permissions")
    return DassError(f"cannot read image {path} ({_one_line(exc, with_type=True)}): the file is unreadable or "
                     "corrupt; replace or delete it")


def _orientation(img) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF data: read the pixels as stored
        return 1


def _probe(path: Path) -> tuple[int, int, bool]:
    """``(height, width, grayscale)`` of an image from its header (EXIF rotation applied)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            gray = img.mode in _GRAY_MODES
            if _orientation(img) in (5, 6, 7, 8):
                w, h = h, w
    except Exception as exc:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, OSError, SyntaxError...
        raise _bad_image(path, exc) from None
    return h, w, gray


def _decode(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """The image as uint8 H x W x C in ``mode`` (``RGB`` or ``L``), upright (EXIF), scaled to cover ``size``
    (height, width) and centre-cropped to it (aspect ratio kept), with Lanczos filtering."""
    from PIL import Image, ImageOps

    height, width = size
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":   # decode at a reduced scale when the target is much smaller (still >= it)
                side = max(height, width)
                img.draft(mode, (side, side))
            if _orientation(img) != 1:
                img = ImageOps.exif_transpose(img)
            img = img.convert(mode)    # decodes the pixels: truncated or corrupt data fails here
            if img.size != (width, height):
                img = ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS)
            array = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - see _probe
        raise _bad_image(path, exc) from None
    return array[..., None] if array.ndim == 2 else array


def _parallel(fn, n: int, desc: str) -> list:
    """``[fn(i) for i in range(n)]`` on a few threads (Pillow decodes without the GIL), with a progress bar for
    large folders; the first failing item's error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    workers = min(8, os.cpu_count() or 1)
    out: list = []
    with tqdm(total=n, desc=desc, unit="img", disable=True if n < PROGRESS_MIN else None, leave=False,
              dynamic_ncols=True) as bar:
        if workers == 1 or n < 64:
            for i in range(n):
                out.append(fn(i))
                bar.update(1)
            return out
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, n, 512):
                chunk = range(start, min(n, start + 512))
                out.extend(pool.map(fn, chunk))
                bar.update(len(chunk))
    return out


def _auto_size(sizes: list[tuple[int, int]]) -> tuple[tuple[int, int], bool]:
    """The size images are stored at when ``data.image_size`` is unset, and whether it is the folder's own: the
    most common height x width when at least half of the images have it and neither side exceeds
    :data:`AUTO_SIZE_MAX`, otherwise :data:`AUTO_SIZE_FALLBACK` square."""
    from collections import Counter

    (size, count), = Counter(sizes).most_common(1)
    if 2 * count >= len(sizes) and max(size) <= AUTO_SIZE_MAX:
        return size, True
    return (AUTO_SIZE_FALLBACK, AUTO_SIZE_FALLBACK), False


def _decode_listing(listing: FolderListing, image_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """All images of the listing (train first, then test) as one uint8 N x H x W x C array, and the labels."""
    items = listing.train + listing.test
    probes = _parallel(lambda i: _probe(items[i][0]), len(items), f"dass: reading {listing.root.name}")
    mode = "L" if all(gray for _, _, gray in probes) else "RGB"
    if image_size is not None:
        size = (image_size, image_size)
    else:
        size, own = _auto_size([(h, w) for h, w, _ in probes])
        if len({(h, w) for h, w, _ in probes}) > 1:
            why = "the images differ in size"
        elif not own:
            why = f"the images are {probes[0][0]} x {probes[0][1]}, over {AUTO_SIZE_MAX} pixels a side"
        else:
            why = ""
        if why:
            print(f"dass: {listing.root}: {why}; storing them at {size[0]} x {size[1]} (set data.image_size=N for "
                  "N x N)", file=sys.stderr, flush=True)
    x = np.empty((len(items), *size, 1 if mode == "L" else 3), dtype=np.uint8)

    def decode_into(i: int) -> None:
        x[i] = _decode(items[i][0], size, mode)

    _parallel(decode_into, len(items), f"dass: decoding {listing.root.name}")
    return x, np.array([label for _, label in items], dtype=np.int64)


def folder_cache_dir() -> Path:
    """Where decoded image folders are cached: ``$DASS_CACHE/folders``, else ``$XDG_CACHE_HOME/dass/folders``,
    else ``~/.cache/dass/folders``."""
    root = os.environ.get("DASS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                        "dass")
    return Path(root) / "folders"


def _cache_name(listing: FolderListing, image_size: int | None, split_fraction: float) -> tuple[str, str]:
    """``(prefix, name)``: the prefix hashes the folder and the settings, the rest every file's path, label,
    modification time and size, so any change to the images makes a new name (and retires the old file)."""
    settings = {"version": FOLDER_CACHE_VERSION, "root": str(listing.root.resolve()), "layout": listing.layout,
                "image_size": image_size, "split_fraction": split_fraction if listing.layout == "single" else None}
    prefix = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    content = hashlib.sha256()
    for split, items in (("train", listing.train), ("test", listing.test)):
        for path, label in items:
            try:
                st = path.stat()
            except OSError as exc:
                raise DassError(f"cannot read image {path}: {exc.strerror or _one_line(exc)}") from None
            rel = path.relative_to(listing.root).as_posix()
            content.update(f"{split}\t{label}\t{rel}\t{st.st_mtime_ns}\t{st.st_size}\n".encode("utf-8", "replace"))
    content.update("\n".join(listing.class_names).encode("utf-8", "replace"))
    return prefix, f"{prefix}-{content.hexdigest()[:24]}.npz"


def _read_cache(path: Path, listing: FolderListing, image_size: int | None) -> ImageDataset | None:
    """The cached dataset, or None when the file is absent, unreadable or does not match the listing."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test", "class_names")}
        expected = [label for _, label in listing.train], [label for _, label in listing.test]
        if arrays["y_train"].tolist() != expected[0] or arrays["y_test"].tolist() != expected[1] \
                or arrays["class_names"].tolist() != listing.class_names \
                or (image_size is not None and arrays["x_train"].shape[1:3] != (image_size, image_size)):
            return None
        return ImageDataset(listing.root.name, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                            arrays["y_test"], listing.class_names)
    except Exception:  # noqa: BLE001 - a damaged or foreign cache file is decoded again and replaced
        return None


def _write_cache(path: Path, prefix: str, dataset: ImageDataset) -> None:
    """Save atomically (a temporary file renamed), then delete older versions of the same folder and settings;
    a cache that cannot be written only costs the next run the decoding."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
                 y_test=dataset.y_test, class_names=np.array(dataset.class_names, dtype=str))
        os.replace(tmp, path)
        for old in path.parent.glob(f"{prefix}-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        warnings.warn(f"dass could not cache the decoded images in {path.parent} "
                      f"({exc.strerror or _one_line(exc)}); set DASS_CACHE to a writable folder to skip decoding "
                      "next time", RuntimeWarning, stacklevel=3)


def _check_folder_options(image_size, split_fraction) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or not 1 <= image_size <= MAX_IMAGE_SIDE):
        raise DassError(f"data.image_size must be a whole number of pixels from 1 to {MAX_IMAGE_SIDE} (images become "
                        f"N x N), or null to keep an image folder's own size; got {image_size!r}")
    if isinstance(split_fraction, bool) or not isinstance(split_fraction, (int, float)) \
            or not 0.0 < split_fraction < 1.0:
        raise DassError(f"data.split_fraction must be in (0, 1) (the share of each class held out for testing), "
                        f"got {split_fraction!r}")


def load_image_folder(root: str | Path, image_size: int | None = None, split_fraction: float = 0.2,
                      cache: bool = True) -> ImageDataset:
    """A dataset from a folder of PNG/JPEG images, one subfolder per class (the class names: the folder names,
    sorted). Layouts:

    * ``train/<class>/...`` and ``val/<class>/...`` (or ``test/<class>/...``; ``val/`` wins when both exist);
      ``train/`` alone is split like a single set;
    * ``<class>/...``: one set, ``split_fraction`` of each class held out as the test split (fixed, seed 0);
    * Tiny-ImageNet: ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` and ``val/val_annotations.txt``.

    Images anywhere under a class folder count. They are converted to RGB (L when all are grayscale), turned
    upright (EXIF), scaled to cover ``image_size`` x ``image_size`` and centre-cropped (Lanczos); unset, the
    folder's own size is kept when at least half the images share it and it is at most 256 pixels a side,
    otherwise they become 32 x 32. The decoded arrays are cached in :func:`folder_cache_dir` (``cache``)."""
    _check_folder_options(image_size, split_fraction)
    root = Path(root)
    listing = list_image_folder(root, split_fraction)
    image_size = None if image_size is None else int(image_size)
    if cache:
        prefix, name = _cache_name(listing, image_size, float(split_fraction))
        found = _read_cache(folder_cache_dir() / name, listing, image_size)
        if found is not None:
            return found
    x, y = _decode_listing(listing, image_size)
    n = len(listing.train)
    dataset = ImageDataset(root.name, x[:n], y[:n], x[n:], y[n:], listing.class_names)
    if cache:
        _write_cache(folder_cache_dir() / name, prefix, dataset)
    return dataset
