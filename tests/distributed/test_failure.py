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
