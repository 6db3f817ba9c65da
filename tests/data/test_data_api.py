"""load_dataset: synthetic data, val/subset carving, real Debian Fashion-MNIST, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import contsup.cli
from contsup.data import DATASETS, SyntheticOptions, load_dataset
from contsup.errors import ContsupError

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_dataset_names():
    assert DATASETS == ["fashion-mnist", "cifar10", "cifar100", "svhn", "stl10", "synthetic"]


def test_synthetic_default_and_seeded():
    ds = load_dataset("synthetic")
    assert ds.train.images.shape == (512, 3, 32, 32) and ds.test.images.shape == (256, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.info.num_classes == 10
    again = load_dataset("synthetic")
    assert torch.equal(ds.train.images, again.train.images)
    other = load_dataset("synthetic", synthetic=SyntheticOptions(seed=1, channels=1, size=16))
    assert other.train.images.shape == (512, 1, 16, 16) and other.info.channels == 1


def test_synthetic_is_learnable():
    """A nearest-class-mean classifier on the raw pixels beats chance by far."""
    ds = load_dataset("synthetic")
    x, y = ds.train.images.flatten(1).float(), ds.train.labels
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    pred = torch.cdist(ds.test.images.flatten(1).float(), means).argmin(1)
    assert (pred == ds.test.labels).float().mean() > 0.5


def test_val_split_and_subset():
    ds = load_dataset("synthetic", val_split=100, seed=3)
    assert len(ds.train) == 412 and len(ds.val) == 100
    key = lambda s: {bytes(im.flatten().tolist()) for im in s.images}  # noqa: E731
    assert not key(ds.train) & key(ds.val)
    again = load_dataset("synthetic", val_split=100, seed=3)
    assert torch.equal(again.val.images, ds.val.images)
    assert not torch.equal(load_dataset("synthetic", val_split=100, seed=4).val.images,
                           ds.val.images)
    sub = load_dataset("synthetic", val_split=100, train_subset=50, seed=3)
    assert len(sub.train) == 50 and torch.equal(sub.val.images, ds.val.images)
    assert key(sub.train) <= key(ds.train)
    assert load_dataset("synthetic").val is None
    with pytest.raises(ContsupError):
        load_dataset("synthetic", val_split=512)
    with pytest.raises(ContsupError):
        load_dataset("synthetic", val_split=500, train_subset=13)


@pytest.mark.skipif(not DEBIAN_FMNIST.is_dir(), reason="Debian dataset-fashion-mnist missing")
def test_real_debian_fashion_mnist():
    ds = load_dataset("fashion-mnist", root=DEBIAN_FMNIST, download=False)
    assert ds.train.images.shape == (60000, 1, 28, 28) and len(ds.test) == 10000
    assert ds.train.labels.unique().tolist() == list(range(10))
    assert ds.info.num_classes == 10 and (ds.info.channels, ds.info.size) == (1, 28)
    assert abs(ds.train.images.float().div(255).mean().item() - ds.info.mean[0]) < 1e-3


@pytest.fixture
def cli():
    """The `contsup` command line."""
    return contsup.cli.main


def test_cli_list(cli, capsys):
    assert cli(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
    assert "3x96x96" in out and "not found" in out


def test_cli_fetch_unknown(cli, capsys):
    assert cli(["data", "fetch", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "valid names" in err


def test_cli_fetch_missing_offline(cli, capsys, tmp_path, monkeypatch):
    from contsup.data import sources

    def offline(url, dest, md5=None, progress=True):
        raise ContsupError(f"cannot download {url}: offline")

    monkeypatch.setattr(sources, "download", offline)
    assert cli(["data", "fetch", "svhn", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and str(tmp_path) in err and err.count("\n") == 1


def test_seeded_subset_is_reproducible_ordered_and_bounded():
    from contsup.data.split import seeded_subset

    test = load_dataset("synthetic").test
    a, b, c = seeded_subset(test, 50, 0), seeded_subset(test, 50, 0), seeded_subset(test, 50, 1)
    assert len(a) == 50 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    with pytest.raises(ContsupError, match="exceeds the 256 test images"):
        seeded_subset(test, 257, 0)
