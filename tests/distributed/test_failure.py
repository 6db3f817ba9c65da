"""A rank that dies or hangs makes every other rank exit non-zero with one clear line, in bounded time."""

import signal
import time

import pytest

ARGS = ["--data", "synthetic", "--arch", "resnet20", "--train-subset", "512", "--batch-size", "16", "--lr", "0.05",
        "--device", "cpu", "--no-progress", "--epochs", "50", "--modules", "3", "--context", "R1", "--pipeline",
        "--stage-sizes", "1,1,1", "--dist-timeout", "4"]


def wait_until_training(procs):
    """Block until rank 0 has printed its pipeline line (every rank has joined)."""
    line = procs[0].stdout.readline()  # the first line rank 0 prints after the process group is up
    assert line.startswith("pipeline:"), line
    time.sleep(1.0)


@pytest.mark.parametrize("how", ["kill", "hang"])
def test_failed_rank_stops_every_rank(ranks, tmp_path, how):
    procs = ranks.start(3, [*ARGS, "--out", str(tmp_path / "run")])
    wait_until_training(procs)
    victim = procs[1]
    victim.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    start = time.monotonic()
    others = [procs[0], procs[2]]
    for p in others:
        _, err = p.communicate(timeout=45)
        assert p.returncode not in (0, None)
        assert "contsup: error: rank" in err and ("peer" in err or "timed out" in err), err
    assert time.monotonic() - start < 45
    if how == "hang":
        victim.kill()
    victim.wait(timeout=10)


TINY = ["--data", "synthetic", "--arch", "resnet8", "--train-subset", "64", "--batch-size", "16", "--lr", "0.05",
        "--device", "cpu", "--no-progress", "--no-step-peak", "--modules", "2", "--context", "R1"]


def until_first_epoch(stdout) -> None:
    """Read rank 0's lines until its first epoch line (a step and a checkpoint are done)."""
    for line in stdout:
        if line.startswith("epoch 1/"):
            return
    pytest.fail("the run ended before its first epoch line")


def test_ctrl_c_on_started_ranks_says_how_to_continue(tmp_path):
    """Ctrl-C in a terminal (SIGINT to the process group) of `contsup train --ranks 2`: every process exits 130 with
    one line and no traceback; the run folder keeps a finished epoch, no half-written file."""
    import os
    import subprocess
    import sys

    from tests.distributed.conftest import SRC

    from contsup.train import load_checkpoint

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "contsup", "train", *TINY, "--ranks", "2", "--out", str(out)]
    p = subprocess.Popen([*argv, "--epochs", "1000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        until_first_epoch(p.stdout)
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    lines = err.strip().splitlines()
    assert p.returncode == 130 and "Traceback" not in err, err
    assert sorted(lines) == sorted([f"contsup: interrupted: rank 0 stopped; {out} keeps the last finished epoch: "
                                    "continue with the same command and --resume", "contsup: interrupted: rank 1 "
                                    "stopped", f"contsup: interrupted; {out} keeps the last finished epoch: continue "
                                    "with the same command and --resume"]), err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1  # what the line promises --resume continues
    assert not [f for f in os.listdir(out) if "tmp" in f]


def test_ctrl_c_on_torchrun_ranks_exits_130_on_each(ranks, tmp_path):
    """Ranks started as torchrun starts them, each sent SIGINT (as a terminal does): 130 and one line each."""
    procs = ranks.start(2, [*TINY, "--epochs", "1000", "--pipeline", "--out", str(tmp_path / "run")])
    until_first_epoch(procs[0].stdout)
    for p in procs:
        p.send_signal(signal.SIGINT)
    for rank, (code, _, err) in enumerate(ranks.finish(timeout=60)):
        assert code == 130 and err.strip().splitlines()[-1].startswith(f"contsup: interrupted: rank {rank}"), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
