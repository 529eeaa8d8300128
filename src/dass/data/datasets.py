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


def load_dataset(spec: str, data_dir: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load a dataset by name (see module doc) or by path; raises :class:`DassError` with advice."""
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise DassError(f"data.dataset must be a dataset name or a path, got {spec!r}; "
                        f"give a .npz file, a folder, or one of {', '.join(NAMED)}")
    if data_dir is not None and not isinstance(data_dir, (str, Path)):
        raise DassError(f"data.data_dir must be a folder path, got {data_dir!r}")
    spec = str(spec)
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
