"""Parsers of the official formats (idx (.gz), CIFAR pickle tar.gz, SVHN .mat, STL-10 .bin), by name in `FORMATS`."""

from __future__ import annotations

import gzip
import io
import pickle
import posixpath
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from contsup.data.specs import DatasetInfo
from contsup.data.split import Split, split_from_numpy
from contsup.errors import ContsupError
from contsup.registry import Registry

# Everything that a damaged or truncated file can make the readers below raise.
_READ_ERRORS = (
    OSError, EOFError, ValueError, KeyError, TypeError, IndexError, struct.error, zlib.error,
    tarfile.TarError, pickle.UnpicklingError, AttributeError,
)


def corrupt(path: str | Path, reason: object) -> ContsupError:
    """The error for a file that exists but cannot be parsed."""
    return ContsupError(f"corrupt or truncated file {path}: {reason}; delete it and fetch it again")


def _open(path: Path):
    """Open a file for reading, transparently gunzipping `.gz`."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _idx_header(f, path: Path) -> tuple[int, tuple[int, ...]]:
    """Read an idx header; return (type code, dims)."""
    head = f.read(4)
    if len(head) != 4 or head[:2] != b"\0\0":
        raise corrupt(path, "not an idx file (bad magic)")
    dtype, ndim = head[2], head[3]
    raw = f.read(4 * ndim)
    if len(raw) != 4 * ndim:
        raise corrupt(path, "idx header truncated")
    return dtype, struct.unpack(f">{ndim}I", raw)


def idx_count(path: str | Path) -> int:
    """Number of items an idx file declares in its header (reads only the header)."""
    path = Path(path)
    try:
        with _open(path) as f:
            return _idx_header(f, path)[1][0]
    except ContsupError:
        raise
    except _READ_ERRORS as err:
        raise corrupt(path, err) from err


# Deflate expands by at most about 1032:1, which bounds what a .gz file can hold.
_MAX_GZIP_RATIO = 1032


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte idx file (optionally .gz) into a uint8 array of its declared shape."""
    path = Path(path)
    try:
        with _open(path) as f:
            dtype, dims = _idx_header(f, path)
            if dtype != 0x08:
                raise corrupt(path, f"idx element type 0x{dtype:02x} is not unsigned byte")
            expected = int(np.prod(dims, dtype=object))
            room = path.stat().st_size * (_MAX_GZIP_RATIO if path.suffix == ".gz" else 1)
            if expected > room:
                raise corrupt(path, f"header declares {expected} bytes of data, more than the file can hold")
            payload = f.read(expected + 1)
    except ContsupError:
        raise
    except _READ_ERRORS as err:
        raise corrupt(path, err) from err
    if len(payload) != expected:
        raise corrupt(path, f"header declares {expected} bytes of data, file holds {len(payload)}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def check_labels(path: str | Path, labels: np.ndarray, num_classes: int) -> None:
    """Labels are integers in 0..num_classes-1."""
    if labels.dtype.kind not in "iu":
        raise corrupt(path, f"labels are of type {labels.dtype}, not integers")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise corrupt(path, f"labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})")


def load_idx_pair(images_path: str | Path, labels_path: str | Path, size: int = 28, num_classes: int = 10) -> Split:
    """An idx image file (N, size, size) and its idx label file (N,) as a 1-channel Split."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (size, size):
        raise corrupt(images_path, f"images of shape {images.shape}, expected (N, {size}, {size})")
    if labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise corrupt(labels_path, f"labels of shape {labels.shape} for {images.shape[0]} images")
    check_labels(labels_path, labels, num_classes)
    return split_from_numpy(images[:, None], labels)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and plain containers (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        """Resolve only the allow-listed globals."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(raw: bytes, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR pickle batch into (N,3,32,32) uint8 images and integer labels."""
    d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if not isinstance(d, dict) or not isinstance(d.get(b"data"), np.ndarray):
        raise ValueError("batch is not a dict holding a data array")
    data = d[b"data"]
    raw_labels = d[label_key]
    if not isinstance(raw_labels, (list, np.ndarray)) or (
            isinstance(raw_labels, list) and not all(type(v) is int for v in raw_labels)):
        raise ValueError("labels are not a list of integers")
    labels = np.asarray(raw_labels)
    if data.dtype != np.uint8 or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"pixels of type {data.dtype} (expected uint8) and labels of type {labels.dtype}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"batch has data {data.shape} and labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar_tar(path: str | Path, num_classes: int) -> tuple[Split, Split]:
    """Read (train, test) straight from the official CIFAR-10/100 python tar.gz."""
    path = Path(path)
    if num_classes == 10:
        train_names = [f"data_batch_{i}" for i in range(1, 6)]
        test_names, key = ["test_batch"], b"labels"
    else:
        train_names, test_names, key = ["train"], ["test"], b"fine_labels"
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                base = posixpath.basename(member.name)
                if member.isfile() and base in train_names + test_names:
                    if base in found:
                        raise corrupt(path, f"archive holds {base} twice")
                    found[base] = _cifar_batch(tar.extractfile(member).read(), key)
    except ContsupError:
        raise
    except _READ_ERRORS as err:
        raise corrupt(path, err) from err
    missing = [n for n in train_names + test_names if n not in found]
    if missing:
        raise corrupt(path, f"archive lacks {', '.join(missing)}")

    def join(names: list[str]) -> Split:
        xs, ys = zip(*(found[n] for n in names), strict=True)
        labels = np.concatenate(ys)
        check_labels(path, labels, num_classes)
        return split_from_numpy(np.concatenate(xs), labels)

    return join(train_names), join(test_names)


def load_svhn_mat(path: str | Path) -> Split:
    """Read an SVHN cropped-digits .mat (X: 32x32x3xN, y: Nx1 with 10 for digit 0)."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    except (*_READ_ERRORS, NotImplementedError, scipy.io.matlab.MatReadError) as err:
        raise corrupt(path, err) from err
    if x.dtype != np.uint8 or y.dtype.kind not in "iu":
        raise corrupt(path, f"X of type {x.dtype} (expected uint8), y of type {y.dtype} (expected integers)")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise corrupt(path, f"X has shape {x.shape}, y has {y.shape[0]} labels")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise corrupt(path, "labels outside 1..10")
    y = np.where(y == 10, 0, y).astype(np.int64)
    return split_from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y)


def load_stl10_bin(x_path: str | Path, y_path: str | Path, size: int = 96) -> Split:
    """Read STL-10 binaries: column-major uint8 images (N,3,96,96) and labels 1..10 (-> 0..9)."""
    x_path, y_path = Path(x_path), Path(y_path)
    try:
        x = np.fromfile(x_path, dtype=np.uint8)
        y = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    except _READ_ERRORS as err:
        raise corrupt(x_path, err) from err
    per = 3 * size * size
    if x.size != y.size * per:
        raise corrupt(x_path, f"{x.size} bytes of images for {y.size} labels ({per} bytes each)")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise corrupt(y_path, "labels outside 1..10")
    images = x.reshape(-1, 3, size, size).transpose(0, 1, 3, 2)  # stored column-major
    return split_from_numpy(np.ascontiguousarray(images), y - 1)


# format name -> (the dataset's files in the order its spec lists them, its info) -> (train, test). A dataset
# names its format (`DatasetSpec.format`); one in a new format registers its reader here.
FORMATS: Registry[Callable[[list[Path], DatasetInfo], tuple[Split, Split]]] = Registry("dataset format")


@FORMATS.register("idx")
def read_idx_files(paths: list[Path], info: DatasetInfo) -> tuple[Split, Split]:
    """idx files (MNIST's format): training images and labels, then test images and labels."""
    tr_x, tr_y, te_x, te_y = paths
    return (load_idx_pair(tr_x, tr_y, info.size, info.num_classes),
            load_idx_pair(te_x, te_y, info.size, info.num_classes))


@FORMATS.register("cifar-tar")
def read_cifar_tar(paths: list[Path], info: DatasetInfo) -> tuple[Split, Split]:
    """The CIFAR-10/100 python tar.gz, both splits."""
    return load_cifar_tar(paths[0], info.num_classes)


@FORMATS.register("svhn-mat")
def read_svhn_mats(paths: list[Path], info: DatasetInfo) -> tuple[Split, Split]:
    """SVHN's training and test .mat files."""
    return load_svhn_mat(paths[0]), load_svhn_mat(paths[1])


@FORMATS.register("stl10-bin")
def read_stl10_bins(paths: list[Path], info: DatasetInfo) -> tuple[Split, Split]:
    """STL-10's binaries extracted from its archive: train_X, train_y, test_X, test_y."""
    tr_x, tr_y, te_x, te_y = paths
    return load_stl10_bin(tr_x, tr_y, info.size), load_stl10_bin(te_x, te_y, info.size)
