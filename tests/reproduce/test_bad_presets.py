"""Presets and sweep folders that are wrong or hostile: one line, nothing created outside --out."""

import json
import os
from pathlib import Path

import pytest
from tests.conftest import cli_error, snapshot
from tests.reproduce.tiny import TINY

from contsup.errors import ContsupError
from contsup.reproduce.presets import jobs, load_preset, run_folder


@pytest.mark.parametrize("line,message", [
    ('modules = "2"', "modules must be an integer"),
    ("lr = [0.1]", "lr must be a finite number"),
    ("bf16 = 1", "bf16 must be true or false"),
    ('dataset = "../../../tmp/x"', "dataset must be one of"),
    ('arch = "resnet8/../../../x"', "unknown architecture"),
    ('context = "R1E/../../x"', "context must be"),
    ('device = "bogus"', "unknown device"),
    ("width = 0", "width must be"),
    ("momentum = 0.0", "momentum (Nesterov SGD) must be"),
    ("recon = [1, 2]", "recon must be"),
])
def test_bad_preset_value(line, message, tmp_path, capsys):
    preset = tmp_path / "bad.toml"
    preset.write_text(f"{TINY}\n[recipe.bad]\nbatch_size = 64\n{line}\n")  # one batch of the 128 images
    before = snapshot(tmp_path)
    assert message in cli_error(capsys, ["reproduce", str(preset), "--recipe", "bad", "--out", str(tmp_path / "out")])
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_negative_seed_in_a_grid(tmp_path, capsys):
    preset = tmp_path / "bad.toml"
    preset.write_text(TINY.replace("seed = [0]", "seed = [-1]"))
    assert "seed must be" in cli_error(capsys, ["reproduce", str(preset), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_run_folder_stays_inside_out(tmp_path):
    assert run_folder(tmp_path, "resnet8-synthetic-K2-R1E-s0") == tmp_path / "resnet8-synthetic-K2-R1E-s0"
    for name in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ContsupError, match="not a plain folder name"):
            run_folder(tmp_path, name)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ContsupError, match="not a plain folder name"):
        run_folder(tmp_path / "out", "link")


@pytest.mark.parametrize("name,text,message", [
    ("settings.json", "{", "cannot read sweep settings"),
    ("summary.json", '{"epochs": ', "cannot read run summary"),
    ("summary.json", '{"epochs": "1"}', "epochs is '1', not a valid count"),
])
def test_corrupt_sweep_files(name, text, message, tmp_path, capsys):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY)
    out = tmp_path / "out"
    job = jobs(load_preset(preset), "cpu", out)[0]
    folder = Path(job.config.out)
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(job.settings))
    (folder / "summary.json").write_text('{"epochs": 1}')
    (folder / name).write_text(text)
    before = snapshot(tmp_path)
    assert message in cli_error(capsys, ["reproduce", str(preset), "--out", str(out), "--in-process"])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("[base]", '[base]\ndata_root = "/tmp/elsewhere"'), "data_root is not a preset setting"),
    (lambda t: t.replace("[base]", "[base]\ndownload = true"), "download is not a preset setting"),
    (lambda t: t.replace('device = "cpu"', 'device = "cpu"\ndata.root = "x"', 1), "data_root is not a preset"),
    (lambda t: t.replace("seed = [0]", f"seed = {list(range(100))}\nlr = {[0.1] * 100}\nwidth = {[8] * 100}"),
     "2000000 configurations, more than the 10000"),
    (lambda t: t.replace('arch = "resnet8"', 'arch = "resnet1202"\nhead = "auglocal"\naux_depth = 64')
     .replace("modules = [2]", "modules = [600]"), "599 AugLocal heads of up to 64 blocks"),  # a 400-byte preset
    (lambda t: t.replace("modules = [2]", "modules = [2]\nman_scale = [true]"), "man_scale (MAN is off"),
    (lambda t: t.replace("context = [\"E2E\", \"R1E\"]", "context = [\"R1E\"]\nmodules = [1]\nhead = [\"0c1f\"]")
     .replace("modules = [2]\n", ""), "head (end-to-end at K = 1"),
    (lambda t: t + "\0", "binary file"),
    (lambda t: t.encode("utf-8").replace(b"tiny", b"tin\xff"), "not UTF-8"),
])
def test_hostile_preset_corpus(edit, message, tmp_path, capsys):
    text = edit(TINY)
    preset = tmp_path / "bad.toml"
    preset.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(tmp_path)
    assert message in cli_error(capsys, ["reproduce", str(preset), "--out", str(tmp_path / "out")])
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_preset_path_that_is_no_file(kind, tmp_path, capsys):
    path = tmp_path / "p.toml"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    assert "not a regular file" in cli_error(capsys, ["reproduce", str(path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_seeds_counted_before_expansion(tiny_preset, tmp_path, capsys):
    seeds = [str(s) for s in range(5_001)]  # times the two contexts of the grid
    assert "10002 configurations" in cli_error(capsys, ["reproduce", str(tiny_preset), "--out", str(tmp_path / "o"),
                                                        "--dry-run", "--seeds", *seeds])
