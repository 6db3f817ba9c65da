import csv
import json
import typing

import pytest

from contsup.cli import main
from contsup.cli.profile import HEAD_FLAGS


def test_profile_writes_table_csv_json_and_plot(capsys, tmp_path):
    out = tmp_path / "prof"
    args = ["profile", "--arch", "resnet20", "-K", "1,2", "--contexts", "R1E", "--batch-size", "8",
            "--input", "3x8x8", "--warmup", "1", "--steps", "1", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "peak MiB" in text and "step ms" in text
    rows = list(csv.DictReader(open(out / "profile.csv")))
    assert [(r["modules"], r["context"]) for r in rows] == [("1", "E2E"), ("2", "R1E")]
    assert all(int(r["peak_bytes"]) > 0 and float(r["step_ms"]) > 0 for r in rows)
    data = json.loads((out / "profile.json").read_text())
    assert len(data["rows"]) == 2 and "machine" in data["meta"]
    assert data["rows"][1]["params"]["context"] > 0 == data["rows"][0]["params"]["context"]
    assert (out / "profile.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpointed_rows_and_the_lower_bound(capsys, tmp_path):
    """Each configuration once per --checkpoint-segments value; every row's bound is `lower_bound` of its network;
    plain E2E sits near its bound, checkpointed E2E well below it."""
    import torch

    from contsup.config import LocalConfig
    from contsup.method.network import LocalNetwork
    from contsup.models import build_arch
    from contsup.profile.bound import lower_bound

    out = tmp_path / "prof"
    args = ["profile", "--arch", "resnet20", "-K", "1,2", "--contexts", "R0", "--batch-size", "16", "--input",
            "3x16x16", "--checkpoint-segments", "0,sqrt", "--warmup", "1", "--steps", "1", "--device", "cpu",
            "--out", str(out)]
    assert main(args) == 0
    assert "bound MiB" in capsys.readouterr().out
    rows = {(r["modules"], r["context"]): r for r in csv.DictReader(open(out / "profile.csv"))}
    assert list(rows) == [("1", "E2E"), ("1", "E2E (ckpt sqrt)"), ("2", "R0"), ("2", "R0 (ckpt sqrt)")]
    torch.manual_seed(0)
    e2e = LocalNetwork(build_arch("resnet20", 3, 10, 16), LocalConfig(modules=1), torch.zeros(1, 3, 16, 16))
    bound = lower_bound(e2e, 16).total
    assert int(rows["1", "E2E"]["bound_bytes"]) == int(rows["1", "E2E (ckpt sqrt)"]["bound_bytes"]) == bound
    plain, ckpt = (int(rows[c]["peak_bytes"]) + int(rows[c]["state_bytes"]) for c in rows if c[0] == "1")
    assert 0.8 < plain / bound < 1.25  # the model (saved tensors, per sample) against the allocator's events
    assert ckpt < 0.8 * min(plain, bound)


@pytest.mark.parametrize("bad", [["--input", "3x16"], ["-K", "a,b"], ["--batch-size", "0"],
                                 ["--checkpoint-segments", "half"], ["-K", "1,2,4", "--cuts", "1.0"],
                                 ["--cuts", "equal-unit"], ["-K", "3", "--cuts", "1.0"]])
def test_bad_flags_are_one_line_errors(capsys, bad):
    assert main(["profile", "--device", "cpu", *bad]) == 2
    assert capsys.readouterr().err.startswith("contsup: error:")


def test_explicit_cuts_as_train_takes_them(capsys):
    args = ["profile", "--arch", "resnet8", "-K", "1,2", "--contexts", "R0", "--batch-size", "8", "--input", "3x8x8",
            "--warmup", "0", "--steps", "1", "--device", "cpu"]
    for cuts, where in (("2.0", "2.0"), ("0", "0.0"), ("equal-units", "1.0")):  # stage.block, unit index, table
        assert main([*args, "--cuts", cuts]) == 0
        assert f"cuts after {where}" in capsys.readouterr().out
    args[2] = "resnet32"  # a paper table has no K = 1 entry: end to end has no cut
    assert main([*args, "--cuts", "equal"]) == 0 and "cuts after 2.1" in capsys.readouterr().out


def test_end_to_end_vit_with_adamw_state(capsys, tmp_path):
    """K = 1 needs no local head (the default 1c2f cannot read tokens); AdamW holds two moments per parameter."""
    out = tmp_path / "prof"
    args = ["profile", "--arch", "vit-mini-p8", "--input", "1x16x16", "-K", "1", "--batch-size", "4", "--warmup", "1",
            "--steps", "1", "--device", "cpu", "--optimizer", "adamw", "--out", str(out)]
    assert main(args) == 0
    row = next(csv.DictReader(open(out / "profile.csv")))
    params = int(row["params_total"]) * 4
    assert int(row["state_bytes"]) >= 3 * params  # weights and the two moments (plus buffers, step counts)


def test_profile_plot_has_plain_tick_labels(capsys, tmp_path, monkeypatch):
    """The axes read 1, 2, 4 and 38, not 2^0 or 3.8x10^1."""
    from contsup.profile import runner

    figures = []
    monkeypatch.setattr(runner, "save_figure", lambda fig, path, dpi=0: figures.append(fig))
    args = ["profile", "--arch", "resnet20", "-K", "1,2,4", "--contexts", "R1E", "--batch-size", "8",
            "--input", "3x8x8", "--warmup", "0", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "p")]
    assert main(args) == 0
    fig = figures[0]
    fig.canvas.draw()
    labels = [t.get_text() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
              for t in axis.get_ticklabels() + axis.get_ticklabels(minor=True) if t.get_text()]
    assert "1" in labels and "4" in labels
    assert not [t for t in labels if "^" in t or "times" in t or "\u00d7" in t], labels


@pytest.mark.parametrize("path", HEAD_FLAGS)
def test_profile_takes_every_head_setting_as_train_does(path):
    """Each head setting of the schema is a `contsup profile` flag, and reaches the profiled networks' settings."""
    from contsup.cli import build_parser
    from contsup.cli.profile import config_from_args
    from contsup.config import settings

    s = settings()[path]
    flag = "--" + s.key.replace("_", "-")
    if s.type is bool:
        given, value = [flag if not s.default else f"--no-{s.key.replace('_', '-')}"], not s.default
    elif typing.get_origin(s.type) is typing.Literal:
        value = next(c for c in typing.get_args(s.type) if c != s.default)
        given = [flag, value]
    else:
        value = s.default + 1
        given = [flag, str(value)]
    cfg = config_from_args(build_parser().parse_args(["profile", *given]))
    assert cfg.local[s.key] == value
    assert s.key not in config_from_args(build_parser().parse_args(["profile"])).local  # the schema's default


def test_a_recorded_profile_command_reads_back_its_head_settings():
    """profile.json records the parsed flags by setting key, and benchmarks/rebound.py rebuilds its networks from
    that record: the head settings of a record (one written before they were derived from the schema too) reach
    the profiled networks' settings."""
    import argparse

    from contsup.cli import build_parser
    from contsup.cli.profile import config_from_args

    defaults = vars(build_parser().parse_args(["profile"]))
    recorded = {"aux_depth": 3, "man_momentum": 0.5, "head_patches": 2, "cascade": 0.0}  # as profile.json holds
    local = config_from_args(argparse.Namespace(**(defaults | recorded))).local
    assert {k: local[k] for k in recorded} == recorded


def test_profile_takes_the_reconstruction_settings(tmp_path):
    """HPFF as released can be profiled: --recon, --recon-schedule and --recon-patches reach the K > 1 networks
    (decoders counted), and the K = 1 row is plain end to end."""
    out = tmp_path / "prof"
    args = ["profile", "--arch", "resnet20", "-K", "1,4", "--contexts", "R0", "--head", "2c2f", "--recon", "5,0.5,0,0",
            "--recon-schedule", "hpff", "--recon-patches", "2", "--cascade", "0.999", "--batch-size", "4",
            "--input", "3x8x8", "--warmup", "0", "--steps", "1", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    rows = {r["modules"]: r for r in csv.DictReader(open(out / "profile.csv"))}
    assert int(rows["4"]["params_decoders"]) > 0 and int(rows["4"]["flops_decoders"]) > 0
    assert int(rows["1"]["params_decoders"]) == 0 == int(rows["1"]["params_heads"])
    recorded = json.loads((out / "profile.json").read_text())["meta"]["config"]
    assert (recorded["recon"], recorded["recon_schedule"], recorded["recon_patches"]) == ("5,0.5,0,0", "hpff", 2)
