"""Parsing tiny files written in each official format."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile

import numpy as np
import pytest
import scipy.io
import torch
from datafiles import add_bytes, write_cifar_tar, write_idx

from contsup.data import load_dataset
from contsup.data.formats import load_stl10_bin, read_idx
from contsup.errors import ContsupError


def _fmnist(folder, rng, n_train=20, n_test=8):
    """Write the four Fashion-MNIST idx files into `folder`."""
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(folder / name, arr)
    return arrays


def test_fashion_mnist_idx(tmp_path, rng):
    arrays = _fmnist(tmp_path, rng)
    ds = load_dataset("fashion-mnist", root=tmp_path, download=False)
    assert ds.train.images.shape == (20, 1, 28, 28) and ds.test.images.shape == (8, 1, 28, 28)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert np.array_equal(ds.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(ds.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte.gz"])


def test_idx_truncated(tmp_path, rng):
    path = tmp_path / "x.gz"
    write_idx(path, rng.integers(0, 256, (5, 28, 28), dtype=np.uint8))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(ContsupError, match="declares"):
        read_idx(path)
    path.write_bytes(path.read_bytes()[:40])  # cut gzip stream itself
    with pytest.raises(ContsupError, match="corrupt"):
        read_idx(path)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_tar(tmp_path, rng, num_classes):
    name = "cifar10" if num_classes == 10 else "cifar100"
    archive = tmp_path / f"cifar-{num_classes}-python.tar.gz"
    written = write_cifar_tar(archive, num_classes, 3, rng)
    ds = load_dataset(name, root=tmp_path, download=False)
    n_train = 15 if num_classes == 10 else 3
    assert ds.train.images.shape == (n_train, 3, 32, 32) and len(ds.test) == 3
    assert ds.info.num_classes == num_classes
    first = written["data_batch_1" if num_classes == 10 else "train"]
    # CIFAR rows are 1024 R, 1024 G, 1024 B values, each row-major 32x32
    assert np.array_equal(ds.train.images[0].numpy(), first[0][0].reshape(3, 32, 32))
    assert ds.train.labels[:3].tolist() == first[1]


def test_cifar_corrupt_and_malicious(tmp_path, rng):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tar(archive, 10, 2, rng)
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(ContsupError, match="corrupt"):
        load_dataset("cifar10", root=tmp_path, download=False)
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with tarfile.open(archive, "w:gz") as tar:  # a pickle that would run code must be refused
        add_bytes(tar, "cifar-10-batches-py/test_batch", pickle.dumps(Evil()))
    with pytest.raises(ContsupError, match="corrupt"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_svhn_mat_label_10_is_zero(tmp_path, rng):
    for split, n in (("train", 6), ("test", 4)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [10], [9], [3]][:n], dtype=np.uint8)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "train":
            x_train = x
    ds = load_dataset("svhn", root=tmp_path, download=False)
    assert ds.train.images.shape == (6, 3, 32, 32) and len(ds.test) == 4
    assert ds.train.labels.tolist() == [0, 1, 2, 0, 9, 3]
    # X[h, w, c, n] -> images[n, c, h, w]
    assert ds.train.images[4, 2, 5, 7] == x_train[5, 7, 2, 4]
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    with pytest.raises(ContsupError, match="corrupt"):
        load_dataset("svhn", root=tmp_path, download=False)


def _stl_image() -> np.ndarray:
    """An asymmetric (3, 96, 96) image: bright top row, dim left column."""
    img = np.zeros((3, 96, 96), dtype=np.uint8)
    img[:, 0, :] = 200  # top row
    img[:, :, 0] = 50  # left column (wins the corner)
    img[1, 10, 20] = 99  # channel 1, row 10, column 20
    return img


def test_stl10_binary_tar_column_major(tmp_path):
    img = _stl_image()
    stored = img.transpose(0, 2, 1).tobytes()  # the files store each channel column-major
    with tarfile.open(tmp_path / "stl10_binary.tar.gz", "w:gz") as tar:
        add_bytes(tar, "stl10_binary/train_X.bin", stored * 2)
        add_bytes(tar, "stl10_binary/train_y.bin", bytes([1, 10]))
        add_bytes(tar, "stl10_binary/test_X.bin", stored)
        add_bytes(tar, "stl10_binary/test_y.bin", bytes([3]))
        add_bytes(tar, "stl10_binary/unlabeled_X.bin", b"")
    ds = load_dataset("stl10", root=tmp_path, download=False)
    assert ds.train.images.shape == (2, 3, 96, 96)
    assert np.array_equal(ds.train.images[0].numpy(), img)
    assert ds.train.labels.tolist() == [0, 9] and ds.test.labels.tolist() == [2]
    assert (tmp_path / "stl10_binary" / "train_X.bin").is_file()  # extracted on first load


def test_stl10_size_mismatch(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0" * 1000)
    (tmp_path / "y.bin").write_bytes(bytes([1]))
    with pytest.raises(ContsupError, match="corrupt"):
        load_stl10_bin(tmp_path / "x.bin", tmp_path / "y.bin")


def test_a_dataset_in_a_known_format_is_one_spec(tmp_path, monkeypatch, rng):
    """A new dataset whose files are in a format contsup reads (here idx) is its `DatasetSpec` alone: it loads,
    and `contsup data list` counts its images from the files."""
    import contsup.data
    from contsup.data import specs
    from contsup.data.sources import split_sizes

    info = specs.DatasetInfo("tiny-digits", 1, 8, 3, (0.5,), (0.5,), 1, "constant", False)
    names = ("train-images.gz", "train-labels.gz", "test-images.gz", "test-labels.gz")
    spec = specs.DatasetSpec(info, tuple(specs.RemoteFile(f"file:///nowhere/{n}", n, "0" * 32) for n in names),
                             format="idx", train_size=5, test_size=2, homepage="")
    for (images, labels), n in zip((names[:2], names[2:]), (5, 2), strict=True):
        write_idx(tmp_path / images, rng.integers(0, 256, (n, 8, 8)))
        write_idx(tmp_path / labels, rng.integers(0, 3, (n,)))
    monkeypatch.setitem(specs.SPECS, "tiny-digits", spec)
    monkeypatch.setattr(contsup.data, "DATASETS", [*contsup.data.DATASETS, "tiny-digits"])
    data = load_dataset("tiny-digits", root=tmp_path, download=False)
    assert (len(data.train), len(data.test)) == (5, 2) and data.info == info
    assert data.train.images.shape[1:] == (1, 8, 8)
    assert split_sizes("tiny-digits", tmp_path) == (5, 2)
