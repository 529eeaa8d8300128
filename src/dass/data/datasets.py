"""Image classification datasets by name or path, held in memory as uint8 NHWC arrays.

Supported sources:

* ``digits``: scikit-learn's bundled 8x8 digits (real data that ships with a dependency; offline);
* ``cifar10``: the official python pickle batches (``cifar-10-batches-py``) in ``data_dir``,
  downloaded there with a checksum check when ``download`` is set and the network allows;
* ``mnist`` / ``fashion_mnist``: MNIST-style idx files (optionally gzipped) or a ``.npz`` in ``data_dir``;
* a path to a ``.npz`` with ``x_train, y_train, x_test, y_test`` (optional ``class_names``);
* a path to a folder holding CIFAR batches or idx files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DassError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
NAMED = ("digits", "cifar10", "mnist", "fashion_mnist")


@dataclass
class ImageDataset:
    """Train and test images (uint8, N x H x W x C) with int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim == 3:
                x = x[..., None]
                setattr(self, f"x_{split}", x)
            if x.ndim != 4 or x.dtype != np.uint8:
                raise DassError(f"dataset {self.name}: x_{split} must be uint8 images N x H x W x C, "
                                f"got {x.dtype} {x.shape}")
            if len(x) != len(y):
                raise DassError(f"dataset {self.name}: x_{split} has {len(x)} images but y_{split} {len(y)} labels")
        self.y_train = self.y_train.astype(np.int64)
        self.y_test = self.y_test.astype(np.int64)
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[1]), int(self.x_train.shape[2])

    def subset(self, n: int | None) -> "ImageDataset":
        """The first ``n`` training images (a quick trial); the test split is kept whole."""
        if n is None or n >= len(self.x_train):
            return self
        if n < 2:
            raise DassError(f"--subset must be at least 2 images, got {n}")
        return ImageDataset(self.name, self.x_train[:n], self.y_train[:n], self.x_test, self.y_test, self.class_names)


def load_dataset(spec: str, data_dir: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load a dataset by name (see module doc) or by path; raises :class:`DassError` with advice."""
    path = Path(spec).expanduser()
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
        if _find_idx(path, "train", "images"):
            return load_idx_folder(path, path.name)
        raise DassError(f"{path} holds neither CIFAR-10 batches (data_batch_1..5, test_batch) nor MNIST idx files")
    if path.exists():
        raise DassError(f"don't know how to read {path}: give a .npz, a folder of CIFAR-10 batches or idx files, "
                        f"or one of the names {', '.join(NAMED)}")
    raise DassError(f"dataset {spec!r} not found: give a path to a .npz file or folder, or one of the names "
                    f"{', '.join(NAMED)} (with --set data.data_dir=FOLDER for cifar10/mnist/fashion_mnist)")


# -- .npz ----------------------------------------------------------------------------------
def load_npz(path: Path) -> ImageDataset:
    if not path.is_file():
        raise DassError(f"dataset file {path} does not exist; check the path (the shared data lives in ../shared/data)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data.files]
            if missing:
                raise DassError(f"{path} lacks array(s) {', '.join(missing)}; a dataset .npz needs "
                                "x_train, y_train, x_test, y_test (uint8 images N x H x W x C, integer labels)")
            names = [str(c) for c in data["class_names"]] if "class_names" in data.files else []
            return ImageDataset(path.stem, data["x_train"], data["y_train"], data["x_test"], data["y_test"], names)
    except (OSError, ValueError) as exc:
        raise DassError(f"cannot read {path} as a .npz dataset: {exc}") from None


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
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DassError(f"{path} is not a CIFAR-10 python batch ({exc}); re-download the dataset") from None
    if not isinstance(raw, dict):
        raise DassError(f"{path} is not a CIFAR-10 python batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _batch_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_batch(path)
    if "data" not in batch or "labels" not in batch:
        raise DassError(f"{path} lacks 'data' or 'labels'; is it a CIFAR-10 python batch?")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DassError(f"{path}: expected data of shape N x 3072, got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), np.asarray(batch["labels"], dtype=np.int64)


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
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in _read_batch(folder / "batches.meta").get("label_names", [])]
    return ImageDataset("cifar10", np.concatenate(xs), np.concatenate(ys), x_test, y_test, names)


def download_cifar10(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(CIFAR10_URL, timeout=60) as response:
            blob = response.read()
    except OSError as exc:
        raise DassError(f"could not download CIFAR-10 ({exc}); copy cifar-10-batches-py into {root} by hand") from None
    digest = hashlib.md5(blob).hexdigest()
    if digest != CIFAR10_MD5:
        raise DassError(f"downloaded CIFAR-10 has md5 {digest}, expected {CIFAR10_MD5}; try again or copy it by hand")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(root, filter="data")


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
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DassError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = data[3]
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
