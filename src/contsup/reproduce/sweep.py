"""Run a grid of configurations, one run folder each: finished runs are skipped, interrupted ones resumed."""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contsup.config import PLACE, settings
from contsup.distributed.spawn import train_run
from contsup.errors import ContsupError
from contsup.files import read_json, write_json
from contsup.reproduce.presets import Job, defaults, normalize
from contsup.reproduce.records import read_summary
from contsup.run import RunConfig
from contsup.train.runfolder import CHECKPOINT, SETTINGS, SUMMARY

# Settings that say where or how a run executes, not what it computes: a run folder is reused across them.
_PLACE = {setting.key for path, setting in settings().items() if path in PLACE}  # as preset keys


@dataclass
class SweepReport:
    """What a sweep did with each configuration."""

    done: list[str] = field(default_factory=list)  # finished earlier: skipped
    trained: list[str] = field(default_factory=list)  # trained from scratch now
    resumed: list[str] = field(default_factory=list)  # continued from a checkpoint now
    failed: list[str] = field(default_factory=list)


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as stored in JSON, defaults filled in (so settings added later match old runs), canonical (an
    older sweep's E2E row may hold settings it never read), place left out."""
    full = normalize({**defaults(), **settings})
    if full["recon"] == "none":  # how sweeps before the one configuration schema stored "no reconstruction"
        full["recon"] = None
    return json.loads(json.dumps({k: v for k, v in full.items() if k not in _PLACE}))


def job_state(job: Job) -> str:
    """`done` (summary of every epoch), `resume` (checkpoint only) or `new`; a folder of another config raises."""
    folder = Path(job.config.out or "")
    stored = folder / SETTINGS
    has_ckpt, has_summary = (folder / CHECKPOINT).is_file(), (folder / SUMMARY).is_file()
    if not (has_ckpt or has_summary):
        return "new"
    if not stored.is_file():
        raise ContsupError(f"{folder} holds a run that no sweep started; move it or choose another --out")
    settings = read_json(stored, "sweep settings")
    if not isinstance(settings, dict) or _comparable(settings) != _comparable(job.settings):
        raise ContsupError(f"{folder} holds a run with other settings (another recipe?); choose another --out")
    if has_summary and read_summary(folder / SUMMARY)["epochs"] >= job.config.train.epochs:
        return "done"
    return "resume"  # killed mid-run, or stopped early on purpose (Trainer.fit(until=...))


_PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies (Linux)


def die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent ends (no orphan keeps training); exit if it already did."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _train(cfg: dict[str, Any], resume: bool, parent: int) -> None:
    """Child-process entry: train one configuration (its summary lands in the run folder); a user error is one line."""
    die_with_parent(parent)
    try:
        train_run(RunConfig.from_dict(cfg), resume=resume)  # its ranks, when it has several
    except ContsupError as err:
        print(f"contsup: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


_children: set[multiprocessing.process.BaseProcess] = set()  # the sweep's live runs, for an interrupt to reach


def run_job(job: Job, resume: bool, isolate: bool = True) -> dict[str, Any]:
    """Train one configuration (in a fresh process with `isolate`, so peak memory is its own); its summary.

    The child dies with this process (a parent-death signal), and an interrupt of the sweep reaches it at once.
    """
    folder = Path(job.config.out or "")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / SETTINGS, job.settings)
    if not isolate:
        train_run(job.config, resume=resume)
    else:
        proc = multiprocessing.get_context("spawn").Process(target=_train,
                                                             args=(job.config.to_dict(), resume, os.getpid()))
        proc.start()
        _children.add(proc)
        try:
            proc.join()
        finally:
            _children.discard(proc)
        if proc.exitcode != 0:
            raise ContsupError(f"run {job.name} failed (exit code {proc.exitcode}); its output is above")
    return read_summary(folder / SUMMARY)


def interrupt_children() -> None:
    """Send SIGINT to every run the sweep has started and that still runs."""
    for proc in list(_children):
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, signal.SIGINT)


def run_sweep(jobs: Sequence[Job], isolate: bool = True, log: Callable[[str], None] = print,
              keep_going: bool = True, workers: int = 1) -> SweepReport:
    """Run every job not finished yet, in order, `workers` at a time; a failure is logged and the sweep goes on."""
    if workers < 1 or (workers > 1 and not isolate):
        raise ContsupError("workers must be >= 1, and more than one needs each run in its own process")
    report = SweepReport()
    states = [job_state(j) for j in jobs]  # check every folder before training anything
    lock, stop = threading.Lock(), threading.Event()

    def one(i: int, job: Job, state: str) -> None:
        if stop.is_set():  # an earlier run failed and keep_going is off
            return
        tag = f"[{i}/{len(jobs)}] {job.name}"
        if state == "done":
            report.done.append(job.name)
            log(f"{tag}: finished earlier, skipped")
            return
        log(f"{tag}: {'resuming' if state == 'resume' else 'training'}")
        start = time.perf_counter()
        try:
            summary = run_job(job, resume=state == "resume", isolate=isolate)
        except ContsupError as err:
            with lock:
                report.failed.append(job.name)
            log(f"{tag}: FAILED: {err}")
            if not keep_going:
                stop.set()
                raise
            return
        with lock:
            (report.resumed if state == "resume" else report.trained).append(job.name)
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        log(f"{tag}: final test error {summary['final_test_error']:.2f}%  ({time.perf_counter() - start:.0f} s, "
            f"peak memory {summary['peak_memory_bytes'] / 2**20:.0f} MiB, load average {load})")

    # Each run is its own process; the threads only start them and wait, in the jobs' order.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, i, job, state) for i, (job, state) in enumerate(zip(jobs, states, strict=True), 1)]
        try:
            for f in futures:
                f.result()
        except KeyboardInterrupt:
            stop.set()
            interrupt_children()
            raise
    return report
