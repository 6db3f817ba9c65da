"""The pipeline computes what the single-process loop computes (docs/method.md, pipeline), on 2 and 3 ranks
and with replicas."""

import json
import shutil
from contextlib import contextmanager

import pytest
import torch

from contsup.cli import main
from contsup.run import evaluate_checkpoint
from contsup.train import load_checkpoint

BASE = ["--data", "synthetic", "--arch", "resnet20", "--train-subset", "64", "--lr", "0.05", "--device", "cpu",
        "--no-progress", "--epochs", "2", "--warmup-epochs", "1"]


@contextmanager
def one_thread():
    """The reference runs on one thread, as every rank does, so rounding is the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference(args):
    """The single-process run: `contsup train` in this process."""
    with one_thread():
        assert main(["train", *args]) == 0


def assert_same_run(pipe_dir, ref_dir, atol, momentum_atol=None):
    pipe, ref = load_checkpoint(pipe_dir / "checkpoint.pt"), load_checkpoint(ref_dir / "checkpoint.pt")
    assert pipe["model"].keys() == ref["model"].keys()
    for key, want in ref["model"].items():  # every weight and every BatchNorm buffer
        torch.testing.assert_close(pipe["model"][key], want, atol=atol, rtol=0, msg=key)
    got_opt, want_opt = pipe["optimizer"], ref["optimizer"]
    assert got_opt["state"].keys() == want_opt["state"].keys()
    for name, state in want_opt["state"].items():  # SGD's momentum, AdamW's moments and step counts, by name
        for key, want in state.items():
            torch.testing.assert_close(got_opt["state"][name][key], want, atol=momentum_atol or atol, rtol=0,
                                       msg=f"{name} {key}")
    assert got_opt["param_groups"] == want_opt["param_groups"]
    assert pipe["epoch"] == ref["epoch"] == 2
    for got, want in zip(pipe["history"], ref["history"], strict=True):
        assert got["lr"] == want["lr"] and got["lr_end"] == want["lr_end"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-4)
        assert got["local_losses"] == pytest.approx(want["local_losses"], abs=1e-4)
        assert got["train_loss_end"] == pytest.approx(want["train_loss_end"], abs=1e-4)  # reduced over ranks
        assert got["local_losses_end"] == pytest.approx(want["local_losses_end"], abs=1e-4)
        assert got["test_error"] == pytest.approx(want["test_error"])


@pytest.mark.parametrize("world,flags,pipe_flags", [
    pytest.param(2, ["--modules", "4", "--context", "R1E", "--recon", "5,1,0,1"], [], marks=pytest.mark.quick),
    (3, ["--modules", "4", "--context", "R2E", "--channels-last"], ["--stage-sizes", "1,2,1", "--inflight", "1"]),
    (2, ["--modules", "4", "--context", "R1E", "--head", "auglocal"], []),  # heads modelled on later units
    (2, ["--modules", "3", "--context", "R1E", "--checkpoint-segments", "2"], []),  # checkpointed modules
    (2, ["--modules", "4", "--context", "R1", "--head-patches", "2", "--optimizer", "adamw"], []),
    # token sequences cross the ranks: a ViT with a class token, its context from the image and from s_1
    (2, ["--arch", "vit-mini-p8", "--modules", "3", "--context", "R1E", "--head", "meantoken", "--optimizer", "adamw"],
     []),
    # a model as a user wrote it (long skips), traced and cut on every rank the same way
    (2, ["--arch", "tests.models.user_models:unet_classifier", "--modules", "4", "--context", "R1E"], []),
])
def test_pipeline_equals_single_process(ranks, tmp_path, world, flags, pipe_flags):
    flags = [*flags, "--batch-size", "32"]
    procs = ranks.start(world, [*BASE, *flags, *pipe_flags, "--pipeline", "--out", str(tmp_path / "pipe")])
    reference([*BASE, *flags, "--out", str(tmp_path / "ref")])
    results = ranks.finish(timeout=90)
    for code, _, err in results:
        assert code == 0, err
    assert "final test error" in results[0][1] and results[1][1] == ""
    assert_same_run(tmp_path / "pipe", tmp_path / "ref", atol=1e-5)
    # The merged checkpoint is an ordinary one: single-process `contsup eval` loads it.
    summary = json.loads((tmp_path / "pipe" / "summary.json").read_text())
    peaks = summary["rank_step_peak_memory_bytes"]  # each rank's allocator peak in one more step, after the epochs
    assert len(peaks) == world and min(peaks) > 0 and summary["step_peak_memory_bytes"] == max(peaks)
    user_code = next((f for f in flags if ":" in f), None)  # the user's model is imported only when named
    result = evaluate_checkpoint(tmp_path / "pipe" / "checkpoint.pt", device="cpu", batch_size=100, arch=user_code)
    assert result["test_error"] == pytest.approx(summary["final_test_error"])
    assert len(procs) == world


def test_replicas_equal_single_process_with_the_whole_batch(ranks, tmp_path):
    # 2 replicas x 2 stages, 16 images per replica, against one process with batches of 32: one step per
    # epoch. Replicas sum gradients in another order, so float32 rounding differs (as it does between
    # 1 and 2 threads in one process); exactness itself is shown in float64 in test_syncbn.py.
    flags = [*BASE, "--train-subset", "32", "--modules", "3", "--context", "R1E", "--batch-size", "32"]
    ranks.start(4, [*flags, "--replicas", "2", "--pipeline", "--out", str(tmp_path / "pipe")])
    reference([*flags, "--out", str(tmp_path / "ref")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 0, err
    # Momentum buffers are (sums of) raw gradients, not scaled by the learning rate: looser in absolute terms.
    assert_same_run(tmp_path / "pipe", tmp_path / "ref", atol=1e-5, momentum_atol=5e-4)


def test_man_across_stages_is_refused_in_one_line(ranks, tmp_path):
    ranks.start(2, [*BASE, "--modules", "2", "--man-momentum", "0.9", "--batch-size", "32", "--pipeline",
                    "--out", str(tmp_path / "pipe")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 2 and "MAN's heads follow the next module's first unit" in err
        assert len(err.strip().splitlines()) == 1


def test_the_cascade_across_stages_is_refused_in_one_line(ranks, tmp_path):
    ranks.start(2, [*BASE, "--modules", "2", "--cascade", "0.999", "--batch-size", "32", "--pipeline",
                    "--out", str(tmp_path / "pipe")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 2 and "HPFF's cascade runs module k - 1 again" in err
        assert len(err.strip().splitlines()) == 1


def test_the_cascade_on_replicas_of_one_stage_equals_one_process(ranks, tmp_path):
    """HPFF's cascade needs every module in one process: two replicas of one stage run it, as one process does."""
    flags = [*BASE, "--train-subset", "32", "--modules", "3", "--context", "R1E", "--batch-size", "32",
             "--cascade", "0.999"]
    ranks.start(2, [*flags, "--replicas", "2", "--pipeline", "--out", str(tmp_path / "pipe")])
    reference([*flags, "--out", str(tmp_path / "ref")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 0, err
    assert_same_run(tmp_path / "pipe", tmp_path / "ref", atol=1e-5, momentum_atol=5e-4)


def test_pipeline_resumes_from_its_merged_checkpoint(ranks, tmp_path):
    """Two parameter groups (the encoders at half rate): the merged checkpoint resumes as a pipeline and in
    one process, both equal to the uninterrupted single-process run."""
    flags = [*BASE, "--train-subset", "32", "--modules", "3", "--context", "R1", "--batch-size", "32",
             "--context-lr-scale", "0.5"]
    ranks.start(2, [*flags, "--epochs", "1", "--pipeline", "--out", str(tmp_path / "pipe")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 0, err
    shutil.copytree(tmp_path / "pipe", tmp_path / "single")
    ranks.start(2, [*flags, "--pipeline", "--resume", "--out", str(tmp_path / "pipe")])
    reference([*flags, "--out", str(tmp_path / "ref")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 0, err
    reference([*flags, "--resume", "--out", str(tmp_path / "single")])
    for resumed in ("pipe", "single"):
        assert_same_run(tmp_path / resumed, tmp_path / "ref", atol=1e-5)
        rows = (tmp_path / resumed / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    assert len(load_checkpoint(tmp_path / "ref" / "checkpoint.pt")["optimizer"]["param_groups"]) > 1


def test_pipeline_evaluates_the_seeded_test_subset_as_one_process(ranks, tmp_path):
    flags = ["--modules", "2", "--context", "R1", "--batch-size", "32", "--eval-subset", "50"]
    ranks.start(2, [*BASE, *flags, "--pipeline", "--out", str(tmp_path / "pipe")])
    reference([*BASE, *flags, "--out", str(tmp_path / "ref")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 0, err
    pipe, ref = (load_checkpoint(tmp_path / d / "checkpoint.pt")["history"] for d in ("pipe", "ref"))
    assert [r["test_images"] for r in pipe] == [r["test_images"] for r in ref] == [50, 256]
    assert [r["test_error"] for r in pipe] == pytest.approx([r["test_error"] for r in ref])
