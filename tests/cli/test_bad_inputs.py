"""Bad settings on the command line: exit 2, one line, nothing written."""

import pytest
import torch
from tests.conftest import cli_error, snapshot
from tests.test_files import TEXT_CORPUS, hostile_text

TRAIN = ["train", "--data", "synthetic", "--arch", "resnet8", "--train-subset", "64", "--batch-size", "32",
         "--lr", "0.05", "--device", "cpu", "--no-progress", "--epochs", "1", "--modules", "2"]


BAD_SETTINGS = [
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "1e308"], "lr must be a finite number > 0 and <= 1000"),
    (["--lr", "-1"], "lr must be"),
    (["--momentum", "-0.5"], "momentum (Nesterov SGD) must be"),
    (["--momentum", "0"], "momentum (Nesterov SGD) must be"),
    (["--momentum", "1.5"], "momentum (Nesterov SGD) must be"),
    (["--weight-decay=-1e-4"], "weight_decay must be"),
    (["--weight-decay", "nan"], "weight_decay must be"),
    (["--clip-grad=-1"], "clip_grad must be"),
    (["--width", "4096", "--widen", "32"], "width x widen must be at most"),
    (["--clip-grad", "inf"], "clip_grad must be"),
    (["--context-lr-scale", "0"], "context_lr_scale must be"),
    (["--seed", "-1"], "seed must be"),
    (["--epochs", "0"], "epochs must be"),
    (["--batch-size", "0"], "batch_size must be"),
    (["--warmup-epochs", "-1"], "warmup_epochs must be"),
    (["--width", "0"], "width must be"),
    (["--widen", "0"], "widen must be"),
    (["--widen", "0.001"], "no channels"),
    (["--val-split", "-1"], "val_split must be"),
    (["--device", "bogus"], "unknown device"),
    (["--arch", "resnet9"], "unknown architecture"),
    (["--train-subset", "16"], "no training step would run"),
    (["--batch-size", "128"], "no training step would run"),
    (["--arch", "resnet1208"], "unknown architecture"),
    (["--lr", "-0.1"], "lr must be"),
    (["--eval-subset", "100000"], "eval_subset=100000 exceeds"),
    (["--val-split", "600"], "leaves no training images"),
]


@pytest.mark.parametrize("flags,message", BAD_SETTINGS)
def test_bad_setting(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in cli_error(capsys, [*TRAIN, *flags, "--out", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("mode,flags,message", [
    *(("--dry-run", f, m) for f, m in BAD_SETTINGS),
    *(("--print-config", f, m) for f, m in BAD_SETTINGS if m != "no channels"),  # the network's: the dry run's
])
def test_bad_setting_refused_without_running(mode, flags, message, tmp_path, capsys):
    """--dry-run and --print-config refuse what the run refuses (its settings and sizes) through the same checks."""
    out = tmp_path / "run"
    assert message in cli_error(capsys, [*TRAIN, *flags, "--out", str(out), mode])
    assert not out.exists()


def test_dry_run_refuses_a_finished_run_and_resume_of_nothing(tmp_path, capsys):
    from contsup.cli import main

    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    before = snapshot(tmp_path)
    assert "already holds a run" in cli_error(capsys, [*TRAIN, "--out", str(out), "--dry-run"])
    assert "is finished" in cli_error(capsys, [*TRAIN, "--out", str(out), "--dry-run", "--resume"])
    assert "nothing to resume" in cli_error(capsys, [*TRAIN, "--out", str(tmp_path / "new"), "--dry-run",
                                                     "--resume"])
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_build(tmp_path, capsys):
    assert "no CUDA device" in cli_error(capsys, [*TRAIN, "--device", "cuda", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_out_that_cannot_hold_a_run(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    before = snapshot(tmp_path)
    assert "is a file" in cli_error(capsys, [*TRAIN, "--out", str(tmp_path / "file")])
    assert "cannot" in cli_error(capsys, [*TRAIN, "--out", str(tmp_path / ("x" * 300))])
    assert "cannot write to run folder" in cli_error(capsys, [*TRAIN, "--out", str(tmp_path / "file" / "run")])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags,message", [
    (["--input", "0x32x32"], "channels must be"),
    (["--input", "3x-2x32"], "height and width"),
    (["--input", "3x100000x100000"], "height and width"),
    (["--classes", "1"], "--classes must be"),
    (["--seed", "-3"], "seed must be"),
])
def test_profile_degenerate_sizes(flags, message, tmp_path, capsys):
    argv = ["profile", "--arch", "resnet8", "-K", "2", "--contexts", "R1E", "--batch-size", "2", "--steps", "1",
            "--out", str(tmp_path / "prof"), *flags]
    assert message in cli_error(capsys, argv)
    assert not (tmp_path / "prof").exists()


@pytest.mark.parametrize("kind,message", TEXT_CORPUS)
def test_config_file_that_is_no_text(kind, message, tmp_path, capsys):
    path = hostile_text(tmp_path, kind)
    out = tmp_path / "run"
    before = snapshot(tmp_path)
    assert message in cli_error(capsys, [*TRAIN, "--config", path, "--out", str(out)])
    assert snapshot(tmp_path) == before and not out.exists()


def test_profile_that_cannot_fit_memory(tmp_path, capsys):
    line = cli_error(capsys, ["profile", "--arch", "resnet8", "-K", "2", "--contexts", "R1E", "--batch-size", "100000",
                              "--input", "3x4096x4096", "--device", "cpu", "--out", str(tmp_path / "prof")])
    assert "needs at least" in line and "lower --batch-size" in line
    assert not (tmp_path / "prof").exists()


@pytest.mark.parametrize("argv", [
    ["runs", "RUNS", "--out", "FILE"],
    ["runs", "RUNS", "--out", "FILE/sub"],
    ["analyze", "RUNS", "--out", "FILE"],
    ["profile", "--arch", "resnet8", "-K", "2", "--out", "FILE"],
    ["reproduce", "table1", "--out", "FILE"],
    ["reproduce", "table1", "--out", "OUT", "--results", "FILE"],
    ["reproduce", "table1", "--out", "OUT", "--data-dir", "FILE"],
    ["train", *TRAIN[1:], "--out", ""],
    ["train", *TRAIN[1:], "--out", "OUT", "--data-dir", "FILE"],
    ["eval", "RUNS", "--data-dir", "FILE"],
])
def test_output_named_as_a_file_refused_before_work(argv, tmp_path, capsys):
    """Every --out, --results and --data-dir is checked before anything is read, trained or written."""
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "runs").mkdir()
    places = {"FILE": str(tmp_path / "file"), "FILE/sub": str(tmp_path / "file" / "sub"),
              "RUNS": str(tmp_path / "runs"), "OUT": str(tmp_path / "out")}
    before = snapshot(tmp_path)
    line = cli_error(capsys, [places.get(a, a) for a in argv])
    assert "is a file" in line or "not a folder" in line or "is empty" in line or "must name a folder" in line, line
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["file", "runs"]
