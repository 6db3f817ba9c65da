"""Checksummed atomic downloads (file:// URLs stand in for the official servers)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from datafiles import write_cifar_tar

from contsup.data import load_dataset, specs
from contsup.data.download import candidate_dirs, download
from contsup.errors import ContsupError


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_ok(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    dest = tmp_path / "out" / "file.bin"
    download(src.as_uri(), dest, _md5(src), progress=False)
    assert dest.read_bytes() == src.read_bytes()
    assert list(dest.parent.iterdir()) == [dest]


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    out = tmp_path / "out"
    with pytest.raises(ContsupError, match="expected md5 0+, got"):
        download(src.as_uri(), out / "file.bin", "0" * 32, progress=False)
    assert list(out.iterdir()) == []


def test_download_unreachable(tmp_path):
    with pytest.raises(ContsupError, match="cannot download"):
        download((tmp_path / "missing.bin").as_uri(), tmp_path / "f.bin", progress=False)
    assert not (tmp_path / "f.bin.part").exists()


def _fake_cifar_spec(monkeypatch, archive, md5):
    """Point the cifar10 spec at a local archive."""
    remote = specs.RemoteFile(archive.as_uri(), "cifar-10-python.tar.gz", md5)
    spec = dataclasses.replace(specs.CIFAR10, files=(remote,))
    monkeypatch.setitem(specs.SPECS, "cifar10", spec)


def test_fetch_then_load_via_file_url(tmp_path, monkeypatch):
    archive = tmp_path / "server" / "cifar.tar.gz"
    archive.parent.mkdir()
    write_cifar_tar(archive, 10, 2, np.random.default_rng(1))
    _fake_cifar_spec(monkeypatch, archive, _md5(archive))
    monkeypatch.setenv("CONTSUP_DATA", str(tmp_path / "data"))
    ds = load_dataset("cifar10")
    assert len(ds.train) == 10 and len(ds.test) == 2
    assert (tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz").is_file()


def test_fetch_bad_checksum_and_truncated(tmp_path, monkeypatch):
    archive = tmp_path / "cifar.tar.gz"
    write_cifar_tar(archive, 10, 2, np.random.default_rng(1))
    good = _md5(archive)
    _fake_cifar_spec(monkeypatch, archive, "f" * 32)
    root = tmp_path / "root"
    with pytest.raises(ContsupError, match=f"expected md5 f+, got {good}"):
        load_dataset("cifar10", root=root)
    assert not root.exists()  # no .part, not even the folder it created
    # a truncated download whose md5 happens to be "published" still fails cleanly on parse
    archive.write_bytes(archive.read_bytes()[:300])
    _fake_cifar_spec(monkeypatch, archive, _md5(archive))
    with pytest.raises(ContsupError, match="corrupt or truncated"):
        load_dataset("cifar10", root=root)


def test_fetch_offline_hints_by_hand_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from contsup.cli import main

    _fake_cifar_spec(monkeypatch, tmp_path / "unreachable.tar.gz", "f" * 32)
    assert main(["data", "fetch", "cifar10", "--dir", str(tmp_path / "new" / "cifar10")]) == 2
    err = capsys.readouterr().err
    assert "cannot download" in err and "by hand into" in err and "contsup data fetch cifar10`" not in err
    assert not (tmp_path / "new").exists()


def test_missing_offline_says_where_and_url(tmp_path):
    with pytest.raises(ContsupError) as err:
        load_dataset("svhn", root=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path) in msg and "http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in msg
    assert "\n" not in msg


def test_unknown_name():
    with pytest.raises(ContsupError, match="valid names: fashion-mnist, cifar10"):
        load_dataset("imagenet")


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTSUP_DATA", str(tmp_path / "d"))
    dirs = candidate_dirs("svhn", None, ("/sys/x",))
    assert [str(d) for d in dirs] == [str(tmp_path / "d" / "svhn"),
                                      str(tmp_path / "cache" / "contsup" / "svhn"), "/sys/x"]
    assert candidate_dirs("svhn", tmp_path) == [tmp_path]
