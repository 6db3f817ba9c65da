import argparse
import json

import pytest
import torch
from tests.conftest import cli_error

from contsup.cli import main
from contsup.cli.train import config_from_args, register

BASE = ["--data", "synthetic", "--arch", "resnet20", "--train-subset", "128", "--batch-size", "64",
        "--lr", "0.05", "--device", "cpu", "--no-progress"]
TINY = [*BASE, "--epochs", "1"]


@pytest.mark.quick
def test_dry_run_prints_param_groups(capsys, tmp_path):
    assert main(["train", *TINY, "--modules", "4", "--context", "R1E", "--dry-run", "--out", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    counts = json.loads(lines[-1])
    assert set(counts) == {"backbone", "heads", "decoders", "context", "frozen", "total"}
    assert counts["context"] > 0 and counts["decoders"] == 0
    assert not (tmp_path / "r").exists()


def test_train_then_eval(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--modules", "3", "--context", "R1E", "--recon", "5,1,0,1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "final test error" in text and "step peak memory" in text and "process peak memory" in text
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.jsonl").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["decoders"] > 0
    assert main(["eval", str(out / "checkpoint.pt"), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["test_error"] == pytest.approx(summary["final_test_error"])
    # A finished run is not silently overwritten.
    assert main(["train", *TINY, "--modules", "3", "--out", str(out)]) == 2


def test_a_tiny_run_prints_no_profiler_lines(capfd, tmp_path):
    assert main(["train", *TINY, "--modules", "2", "--out", str(tmp_path / "run")]) == 0
    captured = capfd.readouterr()
    assert "step peak memory" in captured.out and "profiler" not in captured.err, captured.err


def test_eval_every_skips_epochs_resumes_and_ends_on_the_full_test_set(tmp_path, capsys):
    out = tmp_path / "run"
    flags = [*BASE, "--modules", "2", "--eval-every", "2", "--eval-subset", "64", "--out", str(out)]
    assert main(["train", *flags, "--epochs", "3"]) == 0
    assert "final test error: " in capsys.readouterr().out
    assert main(["train", *flags, "--epochs", "4", "--resume"]) == 0
    assert "on the full test set (256 images)" in capsys.readouterr().out
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("test_images") for r in rows] == [None, 64, 256, 256]  # epoch 3 ended the first run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_set"] == "full" and summary["final_test_error"] == rows[-1]["test_error"]


@pytest.mark.parametrize("recon", [[], ["--recon", "none"], ["--recon", "5,1,0,1"]])
def test_resume_continues(tmp_path, capsys, recon):
    out = tmp_path / "run"  # "none" spelled out: the stored plan has no weights, the settings a string
    assert main(["train", *TINY, "--modules", "2", "--context", "R1", *recon, "--out", str(out)]) == 0
    assert main(["train", *BASE, "--epochs", "2", "--modules", "2",
                 "--context", "R1", *recon, "--out", str(out), "--resume"]) == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


@pytest.mark.parametrize("flags,message", [
    (["--modules", "11"], "between 1 and the number of units"),
    (["--context", "R9", "--modules", "4"], "larger than the number of modules"),
    (["--context", "Q2"], "unknown context mode"),
    (["--modules", "3", "--cuts", "7,2"], "strictly increasing"),
    (["--modules", "3", "--cuts", "2,9"], "out of range"),
    (["--cuts", "1,x"], "cannot read --cuts"),
    (["--recon", "paper"], "no reconstruction weights"),
    (["--data", "imagenet"], "unknown dataset"),
    (["--arch", "vgg"], "unknown architecture"),
    (["--resume"], "nothing to resume"),
    (["--eval-every", "0"], "eval_every"),
    (["--eval-subset", "100000"], "exceeds the 256 test images"),
])
def test_bad_input_one_line_exit_2_nothing_written(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_eval_bad_checkpoints(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none.pt")]) == 2
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    assert main(["eval", str(tmp_path / "foreign.pt")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "not a contsup checkpoint" in err


def test_schedule_and_init_flags_reach_the_config():
    from contsup.cli import build_parser
    from contsup.cli.train import config_from_args

    def cfg(*flags):
        return config_from_args(build_parser().parse_args(["train", *TINY, *flags]))

    default = cfg()
    assert (default.train.schedule, default.local.local_init, default.local.context_scale) == ("step", "torch", 1.0)
    paper = cfg("--local-init", "kaiming", "--schedule", "epoch", "--warmup-epochs", "0")
    assert (paper.train.schedule, paper.local.local_init, paper.local.context_scale) == ("epoch", "kaiming", 1.0)
    assert cfg("--warmup-epochs", "0.5", "--context-lr-scale", "0.1").train.warmup_epochs == 0.5


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "--epochs EPOCHS training epochs (the paper's recipe) (default: 160)" in text
    assert "(default: 0.8)" in text and "examples: contsup train" in text and "last = the last module's loss" in text
    assert "--out OUT run folder: checkpoint.pt, metrics.jsonl, summary.json (default: runs/<dataset>-" in text


def test_eval_labels_an_end_to_end_run_without_a_context_mode(capsys, tmp_path):
    out = tmp_path / "e2e"
    assert main(["train", *TINY, "--modules", "1", "--context", "R1E", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    label = capsys.readouterr().out.splitlines()[0]
    assert label.startswith("resnet20 end-to-end (K=1) on synthetic") and "R1E" not in label


def test_dry_run_refuses_a_device_the_machine_lacks(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = cli_error(capsys, ["train", *TINY, "--device", "cuda", "--dry-run", "--out", str(tmp_path / "r")])
    assert "no CUDA device" in line


def test_dry_run_prints_the_recipe_and_a_missing_dataset(capsys, tmp_path):
    assert main(["train", *TINY, "--data", "cifar10", "--data-root", str(tmp_path), "--no-download", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"device: cpu   data: cifar10: MISSING (looked in {tmp_path}); a run stops (download disabled)"
    assert lines[1].startswith("recipe: 1 epochs over 128 training images, batch 64, SGD (Nesterov momentum 0.9), "
                               "lr 0.05 from 0.01, weight decay 0.0001")
    argv = ["train", *TINY, "--optimizer", "adamw", "--lr", "1e-3", "--warmup-start-lr", "1e-5", "--dry-run"]
    assert main([*argv, "--data", "cifar10", "--data-root", str(tmp_path), "--no-download"]) == 0
    assert ", batch 64, adamw, lr 0.001 from 1e-05," in capsys.readouterr().out  # no momentum: AdamW has none


def test_lean_context_flag():
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    on, off = (config_from_args(p.parse_args(["train", *TINY, *extra])).local.lean_context
               for extra in ([], ["--no-lean-context"]))
    assert on and not off


def test_after_the_last_epoch_the_run_says_what_it_does(capsys, tmp_path):
    """Even without progress bars: the final evaluation and the step-peak measurement are announced, and
    --no-step-peak skips the measurement (the summary says it was not measured)."""
    assert main(["train", *TINY, "--modules", "2", "--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    assert "epoch 1/1 trained; evaluating on the full test set" in text
    assert "measuring the peak memory of one training step at batch 64" in text
    assert main(["train", *TINY, "--modules", "2", "--no-step-peak", "--out", str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert "measuring the peak memory" not in text and "step peak memory: not measured" in text
    assert "step_peak_memory_bytes" not in json.loads((tmp_path / "b" / "summary.json").read_text())


def test_ctrl_c_says_how_to_continue(capsys, tmp_path, monkeypatch):
    from contsup.train.trainer import Trainer

    epochs = Trainer.train_epoch

    def interrupted(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return epochs(self)

    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    capsys.readouterr()
    assert main(["train", *BASE, "--epochs", "2", "--modules", "2", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"contsup: interrupted; {out} keeps the last finished epoch: continue with the same command and " \
                  "--resume"
    monkeypatch.setattr(Trainer, "train_epoch", epochs)
    assert main(["train", *BASE, "--epochs", "2", "--modules", "2", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
