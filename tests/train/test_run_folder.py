"""One run per folder: what a new run, a resume and a diverging run may do to a run folder."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from tests.conftest import cli_error, snapshot

from contsup.cli import main
from contsup.errors import ContsupError
from contsup.run import RunConfig, build_network, load_data, make_trainer
from contsup.train.checkpoint import load_checkpoint
from contsup.train.schedule import make_schedule

TRAIN = ["train", "--data", "synthetic", "--arch", "resnet8", "--train-subset", "64", "--batch-size", "32",
         "--lr", "0.05", "--device", "cpu", "--no-progress", "--modules", "2"]


def strict_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows, refusing NaN and infinity (which are not JSON)."""
    def refuse(name):
        raise ValueError(name)

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture
def finished(tmp_path) -> Path:
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_new_run_refuses_what_is_left_of_another(finished, capsys):
    (finished / "checkpoint.pt").unlink()
    before = snapshot(finished)
    line = cli_error(capsys, [*TRAIN, "--epochs", "1", "--out", str(finished)])
    assert "already holds a run (metrics.jsonl, summary.json)" in line
    assert snapshot(finished) == before


def test_resume_of_a_finished_run_changes_nothing(finished, capsys):
    before = snapshot(finished)
    assert "is finished (1 of 1 epochs)" in cli_error(capsys, [*TRAIN, "--epochs", "1", "--out", str(finished),
                                                               "--resume"])
    assert snapshot(finished) == before


def test_resume_with_other_settings_names_them(finished, capsys):
    before = snapshot(finished)
    line = cli_error(capsys, [*TRAIN, "--epochs", "2", "--out", str(finished), "--resume", "--lr", "0.1",
                              "--image-encoder", "pooled"])
    assert "image_encoder 'paper' -> 'pooled'" in line and "lr 0.05 -> 0.1" in line
    assert snapshot(finished) == before


def test_resume_removes_stale_temporaries(finished):
    (finished / "checkpoint.pt.k3j2.41.contsup-tmp").write_bytes(b"half a checkpoint")
    (finished / "summary.json.x8.7.contsup-tmp").write_text("{")
    (finished / "notes.tmp").write_text("not ours")
    (finished / "checkpoint.pt.mine.tmp").write_text("a user's file named like an old temporary")
    assert main([*TRAIN, "--epochs", "2", "--out", str(finished), "--resume"]) == 0
    assert sorted(p.name for p in finished.glob("*tmp")) == ["checkpoint.pt.mine.tmp", "notes.tmp"]
    assert [r["epoch"] for r in strict_rows(finished / "metrics.jsonl")] == [1, 2]


def test_non_finite_loss_stops_the_run(finished, capsys):
    cfg = RunConfig.from_dict(load_checkpoint(finished / "checkpoint.pt")["meta"]["run"])
    cfg = replace(cfg, train=replace(cfg.train, epochs=2))
    data = load_data(cfg)
    trainer = make_trainer(cfg, data, build_network(cfg, data.info.channels, data.info.num_classes, data.info.size))
    trainer.resume(finished / "checkpoint.pt")
    trainer.cfg = replace(cfg.train, lr=1e30, schedule="epoch")  # the full rate from its first step: diverges
    trainer.schedule = make_schedule("epoch", 1e30, 2, len(trainer.train_loader))
    before = snapshot(finished)
    with pytest.raises(ContsupError, match=r"loss of module 1 stopped being finite at epoch 2, step \d+"):
        trainer.fit()
    assert snapshot(finished) == before  # checkpoint of epoch 1 kept, metrics.jsonl still valid JSON
    assert load_checkpoint(finished / "checkpoint.pt")["epoch"] == 1
    assert len(strict_rows(finished / "metrics.jsonl")) == 1


def test_non_finite_loss_one_line(tmp_path, capsys):
    line = cli_error(capsys, [*TRAIN, "--epochs", "2", "--lr", "1e30", "--schedule", "epoch",  # no warm-up
                              "--out", str(tmp_path / "run")])
    assert "stopped being finite at epoch 1" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()
