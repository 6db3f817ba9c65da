"""Start the ranks of a run on this machine (`--ranks N`, what torchrun would do), or train in this process.

The ranks are `python -m contsup train --config <the run's settings>` with torchrun's environment, on a free
loopback port; each runs `threads` torch threads (1 when unset). They die with this process. After they end,
`ranks.json` in the run folder records each rank's peak memory (resident set) and busy CPU seconds against its
wall-clock seconds: with one thread a rank, 1 - busy / wall is the share of the run it spent waiting.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from contsup.config import RunConfig, to_toml
from contsup.errors import ContsupError
from contsup.files import read_json, write_json
from contsup.run import check_settings, run_training
from contsup.train.runfolder import SUMMARY

RANKS_FILE = "ranks.json"
INTERRUPT_GRACE_S = 30.0  # after Ctrl-C, how long the ranks may take to finish a checkpoint and stop


def train_run(cfg: RunConfig, resume: bool = False, pipeline: bool = False) -> dict[str, Any] | None:
    """Train `cfg` as its settings say: N started ranks, this rank of a distributed run, or this process.

    Returns the summary (None on a rank other than 0).
    """
    from contsup.distributed.launch import run_pipeline  # not at import: the launcher imports the CLI's pieces

    check_settings(cfg)  # before any rank is started or thread count set: each would refuse it anyway
    distributed = "WORLD_SIZE" in os.environ
    if cfg.pipeline.ranks > 1 and not distributed:
        return spawn_ranks(cfg, resume)
    if cfg.pipeline.threads:
        torch.set_num_threads(cfg.pipeline.threads)
    if pipeline or distributed or cfg.pipeline.parallel == "ddp":
        return run_pipeline(cfg, resume=resume)
    if cfg.pipeline.parallel != "local":  # a schedule's arithmetic in this process: its micro-batches in turn
        from contsup.distributed.baselines import check_baseline

        check_baseline(cfg, 1, one_process=True)
    return run_training(cfg, resume=resume)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In a started rank, before it runs: Linux kills it when the process that started it ends."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _wait(procs: list[subprocess.Popen], seconds: float) -> None:
    """Wait up to `seconds` in all for the processes to end."""
    end = time.monotonic() + seconds
    for p in procs:
        try:
            p.wait(max(end - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            return


def spawn_ranks(cfg: RunConfig, resume: bool) -> dict[str, Any]:
    """Start `cfg.pipeline.ranks` ranks of `cfg` and wait for them; rank 0's summary (and `ranks.json`)."""
    if cfg.out is None:
        raise ContsupError("--ranks needs a run folder (--out)")
    world = cfg.pipeline.ranks
    threads = cfg.pipeline.threads or 1
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(to_toml(cfg))
    port, procs, start = free_port(), [], time.perf_counter()
    try:
        for rank in range(world):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                   "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": str(threads)}
            cmd = [sys.executable, "-m", "contsup", "train", "--config", f.name, "--pipeline",
                   *(["--resume"] if resume else [])]
            procs.append(subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent))  # noqa: PLW1509
        usage = []
        for p in procs:
            _, status, ru = os.wait4(p.pid, 0)  # this rank's own resource use
            p.returncode = os.waitstatus_to_exitcode(status)
            usage.append({"rank": len(usage), "exit": p.returncode, "wall_s": time.perf_counter() - start,
                          "busy_s": ru.ru_utime + ru.ru_stime, "threads": threads,
                          "peak_rss_bytes": ru.ru_maxrss * (1 if sys.platform == "darwin" else 1024)})
    except KeyboardInterrupt:  # Ctrl-C: each rank stops with its line (a terminal sent it to them too; else here)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        _wait(procs, INTERRUPT_GRACE_S)
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        os.unlink(f.name)
    failed = [u["rank"] for u in usage if u["exit"] != 0]
    if failed:
        raise ContsupError(f"rank(s) {', '.join(map(str, failed))} of {world} failed; their lines are above")
    summary = read_json(Path(cfg.out) / SUMMARY, "run summary")
    for u, peak in zip(usage, summary.get("rank_step_peak_memory_bytes", []), strict=False):
        u["step_peak_bytes"] = peak  # the rank's own tensor allocations in one step (`PipelineStep.step_peak`)
    write_json(Path(cfg.out) / RANKS_FILE, usage)
    return summary
