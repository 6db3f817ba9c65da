"""Writers of tiny files in each official dataset format (shared by the data tests)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped idx file."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add an in-memory file to a tar archive."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar_tar(path: Path, num_classes: int, n_per_batch: int, rng) -> dict:
    """A CIFAR-10/100 python tar.gz; returns the arrays written, keyed by batch name."""
    if num_classes == 10:
        top, names, key = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + [
            "test_batch"], b"labels"
    else:
        top, names, key = "cifar-100-python", ["train", "test"], b"fine_labels"
    written = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, num_classes, n_per_batch).tolist()
            d = {b"data": data, key: labels, b"batch_label": b"x"}
            if num_classes == 100:
                d[b"coarse_labels"] = [0] * n_per_batch
            add_bytes(tar, f"{top}/{name}", pickle.dumps(d, protocol=2))
            written[name] = (data, labels)
    return written
