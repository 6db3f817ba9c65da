"""Atomic writes, checked JSON reads and stale temporaries."""

import os

import pytest

from contsup.errors import ContsupError
from contsup.files import atomic_write, read_json, remove_stale_temps, write_json


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
