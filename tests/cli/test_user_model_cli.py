"""`--arch package.module:function`: every command runs the user's own model code; defaults follow the layout."""

import json
import re

import pytest
from tests.conftest import cli_error

from contsup.cli import main
from contsup.models import BACKBONES, reference

BASE = ["--data", "synthetic", "--train-subset", "128", "--batch-size", "64", "--epochs", "1", "--lr", "0.05",
        "--device", "cpu", "--no-progress"]
CODE = '''
from torch import nn


def cnn(in_channels, num_classes):
    """A newcomer's Sequential, unsplit: conv-BN-ReLU blocks, Flatten, Linear."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, num_classes),
    )
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """The user's folder holding their model file (a module name no other test imports), as the working folder."""
    (tmp_path / "my_cli_nets.py").write_text(CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_cli_nets:cnn"


def test_train_eval_analyze_and_profile_the_users_model(user_code, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--arch", user_code, "--modules", "3", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "cut after 2 ->" in text and "cut after 5 ->" in text  # where the cuts fell, by module path
    assert main(["train", *BASE, "--arch", user_code, "--modules", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    # the checkpoint names the code; it is imported only when the user names it again (a new process: none named)
    monkeypatch.setattr(reference, "_allowed", set())
    line = cli_error(capsys, ["eval", str(out), "--device", "cpu"])
    assert line.endswith(f"was trained on {user_code}, your own code; contsup imports code only when you name it: "
                         f"add --arch {user_code}")
    assert main(["eval", str(out), "--device", "cpu", "--arch", user_code]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["test_error"] == pytest.approx(summary["final_test_error"]) and result["arch"] == user_code
    assert main(["analyze", str(out), "--arch", user_code, "--train-size", "64", "--test-size", "64", "--no-recon",
                 "--probe-steps", "5", "--out", str(tmp_path / "analysis")]) == 0
    assert (tmp_path / "analysis" / "analysis.csv").is_file()
    prof = ["profile", "--arch", user_code, "-K", "2", "--contexts", "R1E", "--batch-size", "4", "--input",
            "3x32x32", "--warmup", "0", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "prof")]
    assert main(prof) == 0
    assert re.search(r"K=2 R1E: peak .* ms/step, cuts after 5\n", capsys.readouterr().out)


@pytest.mark.parametrize("arch", ["os;rm:x", "my-nets:cnn", "nets:", ":cnn", "a..b:c", "nets:cnn:x"])
def test_a_malformed_reference_is_refused_before_anything_is_imported(arch, capsys):
    line = cli_error(capsys, ["train", *BASE, "--arch", arch, "--dry-run"])
    assert "name your model as package.module:function" in line


def test_a_model_that_does_not_fit_the_data_is_one_line(capsys):
    """A model for 3-channel images on Fashion-MNIST (1 channel): the model's own error, in one line."""
    line = cli_error(capsys, ["train", "--data", "fashion-mnist", "--arch", "tests.models.user_models:resnet50_like",
                              "--dry-run"])
    assert "ResNet fails on an input of shape (1, 1, 28, 28): Given groups=1" in line


def test_a_missing_module_or_function_is_one_line(user_code, capsys):
    assert "cannot import no_such_module_here" in cli_error(
        capsys, ["train", *BASE, "--arch", "no_such_module_here:cnn", "--dry-run"])
    assert "my_cli_nets has no function nope" in cli_error(capsys, ["train", *BASE, "--arch", "my_cli_nets:nope",
                                                                    "--dry-run"])


def test_a_vit_trains_with_the_default_heads(capsys):
    """Token cuts take token heads by default (the class token's), so `--arch vit-*` needs no --head."""
    assert main(["train", "--data", "synthetic", "--arch", "vit-mini", "--modules", "4", "--context", "R1E",
                 "--batch-size", "64", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("head clstoken, context from") == 3


def test_help_names_every_registered_backbone(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for entry in BACKBONES.describe().split(", "):
        assert " ".join(entry.split()) in text.replace("- ", "-"), entry
    assert re.search(r"package\.module:function", text)
