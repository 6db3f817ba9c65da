"""Atomic writes, checked JSON reads and stale temporaries."""

import json
import os

import pytest

from contsup.errors import ContsupError
from contsup.files import (
    TEXT_LIMIT,
    atomic_write,
    check_out_dir,
    parse_json,
    read_json,
    read_text_file,
    remove_stale_temps,
    write_json,
)


@pytest.mark.quick
def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"a": 1})

    def half(tmp):
        open(tmp, "w").write('{"a": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half)
    with pytest.raises(ValueError):
        write_json(path, {"a": float("nan")})
    assert read_json(path, "summary") == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "s.json").write_text('{"epochs": ')
    with pytest.raises(ContsupError, match="cannot read run summary .*s.json") as info:
        read_json(tmp_path / "s.json", "run summary")
    assert "\n" not in str(info.value)


def test_only_our_temporaries_are_removed(tmp_path):
    ours = ["checkpoint.pt.a1.123.contsup-tmp", "settings.json.b_2.9.contsup-tmp"]
    theirs = ["checkpoint.pt.a1.tmp", "checkpoint.pt.x.contsup-tmp", "metrics.jsonl.a.1.contsup-tmp", "data.tmp",
              "checkpoint.pt"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path, ("checkpoint.pt", "settings.json"))
    assert sorted(p.name for p in removed) == ours
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)


def test_temporaries_carry_the_pid(tmp_path):
    seen = []
    atomic_write(tmp_path / "summary.json", lambda tmp: seen.append(tmp) or open(tmp, "w").write("{}"))
    assert seen[0].endswith(f".{os.getpid()}.contsup-tmp")


def hostile_text(tmp_path, kind: str):
    """A path that is no regular UTF-8 text file of bounded size: what `read_text_file` must refuse."""
    path = tmp_path / f"in-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"lr = 0.1\x00\x01\x02")
    elif kind == "latin1":
        path.write_bytes("lr = 0.1 # caf\xe9".encode("latin-1"))
    elif kind == "huge":
        path.write_bytes(b"#" * (TEXT_LIMIT + 1))
    elif kind == "zero":
        return "/dev/zero"
    return str(path)


TEXT_CORPUS = [("fifo", "not a regular file"), ("zero", "not a regular file"), ("folder", "not a regular file"),
               ("binary", "binary file"), ("latin1", "not UTF-8"), ("huge", "more than the"), ("missing", "no ")]


@pytest.mark.parametrize("kind,message", TEXT_CORPUS)
def test_read_text_file_refuses(kind, message, tmp_path):
    with pytest.raises(ContsupError, match=message) as info:
        read_text_file(hostile_text(tmp_path, kind), "config file")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text,message", [("[1, 2]", None), ('"a string"', None), ("NaN", "NaN is not JSON"),
                                          ("[" * 100_000, "cannot read")])
def test_parse_json_is_strict(text, message):
    if message is None:
        assert parse_json(text, "x", "summary") == json.loads(text)
        return
    with pytest.raises(ContsupError, match=message):
        parse_json(text, "x", "summary")


def test_out_dir_checked_up_front(tmp_path):
    (tmp_path / "file").write_text("keep")
    for out, message in (("", "is empty"), (tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "is a file")):
        with pytest.raises(ContsupError, match=message):
            check_out_dir(out, "--out")
    assert check_out_dir(tmp_path / "new" / "folder", "--out") == tmp_path / "new" / "folder"
    assert not (tmp_path / "new").exists()
