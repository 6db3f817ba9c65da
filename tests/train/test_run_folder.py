"""One run per folder: what a new run, a resume and a diverging run may do to a run folder."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tests.conftest import cli_error, snapshot

from contsup.cli import main
from contsup.errors import ContsupError
from contsup.run import RunConfig, build_network, load_data, make_trainer
from contsup.train.checkpoint import load_checkpoint
from contsup.train.runfolder import hold_run_folder
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
    net = build_network(cfg, data.info.channels, data.info.num_classes, data.info.size)
    trainer = make_trainer(cfg, data, net)
    trainer.resume(finished / "checkpoint.pt")
    trainer.config = replace(cfg.train, lr=1e30, schedule="epoch")  # the full rate from its first step: diverges
    trainer.schedule = make_schedule("epoch", 1e30, 2, len(trainer.loaders.train))
    before = snapshot(finished)
    with pytest.raises(ContsupError, match=r"loss of module 1 stopped being finite at epoch 2, step \d+"):
        trainer.fit()
    assert snapshot(finished) == before  # checkpoint of epoch 1 kept, metrics.jsonl still valid JSON
    assert load_checkpoint(finished / "checkpoint.pt")["epoch"] == 1
    assert len(strict_rows(finished / "metrics.jsonl")) == 1


def test_non_finite_loss_one_line(tmp_path, capsys):
    line = cli_error(capsys, [*TRAIN, "--epochs", "2", "--lr", "1000", "--schedule", "epoch",  # no warm-up
                              "--out", str(tmp_path / "run")])
    assert "epoch 1" in line and ("stopped being finite" in line or "became nan" in line), line
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("name", ["metrics.jsonl", "checkpoint.pt", "summary.json", "settings.json", ".lock",
                                  "tensorboard"])
@pytest.mark.parametrize("dangling", [True, False])
def test_run_files_that_are_links_are_refused(name, dangling, tmp_path, capsys):
    """A link in a fresh --out, dangling or not, is never written through: nothing appears outside --out."""
    out, outside = tmp_path / "run", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    if not dangling:
        (outside / "target").write_text("keep")
    (out / name).symlink_to(outside / "target")
    before = snapshot(tmp_path)
    assert "is a symbolic link" in cli_error(capsys, [*TRAIN, "--epochs", "1", "--out", str(out)])
    assert snapshot(tmp_path) == before and sorted(p.name for p in outside.iterdir()) == ([] if dangling else
                                                                                           ["target"])


def test_second_writer_and_readers_refused_while_a_run_holds_the_folder(finished, capsys):
    before = snapshot(finished)
    with hold_run_folder(finished):
        busy = f"is being written by another contsup process (pid {os.getpid()})"
        assert busy in cli_error(capsys, [*TRAIN, "--epochs", "2", "--out", str(finished), "--resume"])
        assert busy in cli_error(capsys, ["eval", str(finished), "--device", "cpu"])
        assert busy in cli_error(capsys, ["analyze", str(finished), "--out", str(finished.parent / "an")])
        with pytest.raises(ContsupError, match="being written"), hold_run_folder(finished):
            pass
    assert snapshot(finished) == before and not (finished / ".lock").exists()
    assert not (finished.parent / "an").exists()


def _cli(*argv: str, kill_before_summary: bool = False) -> subprocess.Popen:
    """`contsup ARGV` in a fresh process (optionally SIGKILLed by itself right before it writes summary.json)."""
    kill = ("import os, signal; from contsup.train import trainer; "
            "trainer.write_json = lambda *a: os.kill(os.getpid(), signal.SIGKILL); ") if kill_before_summary else ""
    code = f"import sys; {kill}from contsup.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_two_runs_into_one_folder(tmp_path, capsys):
    """The second run is refused while the first runs; the first finishes with its own rows only."""
    out = tmp_path / "run"
    first = _cli(*TRAIN[:-2], "--modules", "1", "--epochs", "3", "--seed", "7", "--out", str(out))
    deadline = time.monotonic() + 120
    while not (out / ".lock").is_file() or not (out / ".lock").read_text().strip():
        assert first.poll() is None and time.monotonic() < deadline, first.stderr and first.stderr.read()
        time.sleep(0.05)
    line = cli_error(capsys, [*TRAIN, "--epochs", "3", "--seed", "8", "--out", str(out)])
    assert f"is being written by another contsup process (pid {first.pid})" in line
    assert first.wait(timeout=300) == 0, first.stderr.read() if first.stderr else ""
    rows = strict_rows(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(r["local_losses"] == [] for r in rows)  # K = 1: the first's
    assert json.loads((out / "summary.json").read_text())["meta"]["run"]["train"]["seed"] == 7
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.jsonl", "summary.json"]


def test_summary_lost_to_a_kill_is_completed_by_resume(finished, tmp_path, capsys):
    """A run killed between its last checkpoint and its summary: --resume trains nothing, writes that summary."""
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "summary.json").unlink()
    checkpoint = (copy / "checkpoint.pt").read_bytes()
    assert "already holds a run" in cli_error(capsys, [*TRAIN, "--epochs", "1", "--out", str(copy)])
    assert main([*TRAIN, "--epochs", "1", "--out", str(copy), "--resume"]) == 0
    want, got = (json.loads((f / "summary.json").read_text()) for f in (finished, copy))
    want["meta"]["run"]["out"] = str(copy)
    assert got == want  # every figure, the re-measured step peak included
    assert (copy / "checkpoint.pt").read_bytes() == checkpoint  # no epoch trained
    # the same after a real SIGKILL at that moment: the lock it held is released by the OS
    out = tmp_path / "killed"
    killed = _cli(*TRAIN, "--epochs", "1", "--out", str(out), kill_before_summary=True)
    assert killed.wait(timeout=300) == -signal.SIGKILL
    assert (out / "checkpoint.pt").is_file() and not (out / "summary.json").exists()
    assert main([*TRAIN, "--epochs", "1", "--out", str(out), "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_error"] == strict_rows(out / "metrics.jsonl")[-1]["test_error"]
    assert "is finished" in cli_error(capsys, [*TRAIN, "--epochs", "1", "--out", str(out), "--resume"])


def test_lock_file_removed_by_its_holder_between_open_and_lock(tmp_path, monkeypatch):
    """The holder ends (and removes .lock) after our open, before our lock: one line, no FileNotFoundError."""
    import contsup.train.runfolder as runfolder

    flock = runfolder.fcntl.flock

    def holder_leaves(fd, op):
        (tmp_path / "run" / ".lock").unlink()
        return flock(fd, op)

    monkeypatch.setattr(runfolder.fcntl, "flock", holder_leaves)
    with pytest.raises(ContsupError, match="try again"), hold_run_folder(tmp_path / "run"):
        pass


def test_resume_from_another_pytorch_version_says_so(finished, capsys):
    """An optimizer state with a setting this PyTorch does not write (as a newer one would): named, not malformed."""
    payload = torch.load(finished / "checkpoint.pt", weights_only=True)
    for group in payload["optimizer"]["param_groups"]:
        group["decoupled_weight_decay"] = False
    torch.save(payload, finished / "checkpoint.pt")
    line = cli_error(capsys, [*TRAIN, "--epochs", "3", "--out", str(finished), "--resume"])
    assert "optimizer settings decoupled_weight_decay are known to only one of this PyTorch" in line, line
