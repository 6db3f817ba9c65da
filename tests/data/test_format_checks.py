"""Dataset files with wrong shapes, types, labels, counts or duplicates: refused, naming the file."""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile

import numpy as np
import pytest
import scipy.io
from datafiles import add_bytes, write_cifar_tar, write_idx
from tests.conftest import cli_error, snapshot

from contsup.cli import main
from contsup.data import load_dataset
from contsup.errors import ContsupError

FMNIST = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
          "t10k-labels-idx1-ubyte.gz"]


def fmnist(folder, rng, size=28, labels_high=10, n=8):
    """The four Fashion-MNIST idx files with `n` images of `size` x `size` and labels below `labels_high`."""
    folder.mkdir(parents=True, exist_ok=True)
    for images, labels in (FMNIST[:2], FMNIST[2:]):
        write_idx(folder / images, rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        write_idx(folder / labels, rng.integers(0, labels_high, n, dtype=np.uint8) if labels_high <= 10
                  else np.full(n, labels_high - 1, dtype=np.uint8))


def refused(root, message, name="fashion-mnist"):
    with pytest.raises(ContsupError, match=message) as info:
        load_dataset(name, root=root, download=False)
    assert "\n" not in str(info.value)


def test_fashion_mnist_checks(tmp_path, rng):
    fmnist(tmp_path / "labels", rng, labels_high=11)
    refused(tmp_path / "labels", "labels outside 0..9")
    fmnist(tmp_path / "size", rng, size=32)
    refused(tmp_path / "size", r"expected \(N, 28, 28\)")
    huge = tmp_path / "huge"
    fmnist(huge, rng)
    with gzip.open(huge / FMNIST[0], "wb") as f:  # declares 2^31 images of 28x28, holds none
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 28, 28))
    refused(huge, "more than the file can hold")
    short = tmp_path / "short"
    fmnist(short, rng)
    write_idx(short / FMNIST[1], rng.integers(0, 10, 5, dtype=np.uint8))  # 5 labels for 8 images
    refused(short, "labels of shape")


def _cifar_batch_bytes(data, labels) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels}, protocol=2)


def test_cifar_checks(tmp_path, rng):
    good = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    cases = {
        "twice": [("data_batch_1", _cifar_batch_bytes(good, [0, 1]))],
        "pixels of type float": [("data_batch_2", _cifar_batch_bytes(good.astype(np.float32), [0, 1]))],
        "labels are not a list of integers": [("data_batch_2", _cifar_batch_bytes(good, [0.0, 1.5]))],
        "labels outside": [("data_batch_2", _cifar_batch_bytes(good, [0, 10]))],
    }
    for message, extra in cases.items():
        folder = tmp_path / message.replace(" ", "_")
        folder.mkdir()
        archive = folder / "cifar-10-python.tar.gz"
        write_cifar_tar(archive, 10, 2, rng)
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, raw in extra:
            members[f"cifar-10-batches-py/{name}" if message != "twice" else f"copy/{name}"] = raw
        with tarfile.open(archive, "w:gz") as tar:
            for name, raw in members.items():
                add_bytes(tar, name, raw)
        refused(folder, message, "cifar10")


def test_svhn_float_labels(tmp_path, rng):
    for split in ("train", "test"):
        x = rng.integers(0, 256, (32, 32, 3, 2), dtype=np.uint8)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array([[1.5], [2.0]])})
    refused(tmp_path, "expected integers", "svhn")


def test_broken_files_refused_by_the_cli_nothing_written(tmp_path, rng, capsys):
    fmnist(tmp_path / "data", rng, labels_high=11)
    before = snapshot(tmp_path)
    line = cli_error(capsys, ["train", "--data", "fashion-mnist", "--data-dir", str(tmp_path / "data"),
                              "--arch", "resnet8", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                              "--no-progress", "--out", str(tmp_path / "run")])
    assert "labels outside" in line and snapshot(tmp_path) == before


def test_data_list_names_a_missing_file(tmp_path, rng, monkeypatch, capsys):
    fmnist(tmp_path / "data" / "fashion-mnist", rng)
    (tmp_path / "data" / "fashion-mnist" / FMNIST[3]).unlink()
    monkeypatch.setenv("CONTSUP_DATA", str(tmp_path / "data"))
    assert main(["data", "list"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("fashion-mnist"))
    assert f"incomplete copy in {tmp_path / 'data' / 'fashion-mnist'} (missing {FMNIST[3]})" in row


def _empty_test_split(folder, rng):
    fmnist(folder, rng)
    write_idx(folder / FMNIST[2], np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(folder / FMNIST[3], np.zeros(0, dtype=np.uint8))


def _names_a_file(folder, rng):
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_bytes(b"not a folder")


@pytest.mark.parametrize("make,message", [
    (_empty_test_split, "test split of fashion-mnist holds no image"),
    (_names_a_file, "is not a folder"),
    (lambda folder, rng: fmnist(folder, rng, labels_high=11), "labels outside 0..9"),
])
def test_hostile_dataset_folder_corpus(make, message, tmp_path, rng, capsys):
    """train on a damaged dataset folder: exit 2, one line, nothing written anywhere."""
    data, out = tmp_path / "data", tmp_path / "run"
    make(data, rng)
    before = snapshot(tmp_path)
    assert message in cli_error(capsys, [
        "train", "--data", "fashion-mnist", "--data-dir", str(data), "--no-download", "--arch", "resnet8",
        "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert snapshot(tmp_path) == before and not out.exists()
