import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.reproduce.tiny import TINY

from contsup.errors import ContsupError
from contsup.reproduce.presets import jobs, load_preset
from contsup.reproduce.sweep import job_state, run_sweep
from contsup.run import build_network, load_data, make_trainer
from contsup.train.runfolder import hold_run_folder


def quiet(_: str) -> None:
    pass


def test_sweep_runs_then_skips(tiny_preset, tmp_path):
    todo = jobs(load_preset(tiny_preset), "cpu", tmp_path / "sweep")
    assert [j.name for j in todo] == ["resnet8-synthetic-K1-E2E-n128-s0", "resnet8-synthetic-K2-R1E-n128-s0"]
    report = run_sweep(todo, isolate=False, log=quiet)
    assert report.trained == [j.name for j in todo] and not report.failed
    for job in todo:
        summary = json.loads((tmp_path / "sweep" / job.name / "summary.json").read_text())
        assert summary["epochs"] == 1 and summary["meta"]["run"]["local"]["modules"] == job.config.local.modules
        assert job_state(job) == "done"
    again = run_sweep(todo, isolate=False, log=quiet)
    assert again.done == [j.name for j in todo] and not again.trained and not again.resumed


def test_interrupted_run_resumes(tiny_preset, tmp_path):
    job = jobs(load_preset(tiny_preset), "long", tmp_path)[1]
    # A sweep stopped after epoch 1 of 2: checkpoint, settings and a summary of epoch 1 only.
    (tmp_path / job.name).mkdir()
    (tmp_path / job.name / "settings.json").write_text(json.dumps(job.settings))
    data = load_data(job.config)
    trainer = make_trainer(job.config, data, build_network(job.config, 3, 10, 32))
    trainer.fit(until=1)
    assert job_state(job) == "resume"
    (tmp_path / job.name / "summary.json").unlink()  # killed: no summary at all
    assert job_state(job) == "resume"
    report = run_sweep([job], isolate=False, log=quiet)
    assert report.resumed == [job.name]
    rows = [json.loads(line) for line in (tmp_path / job.name / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_isolated_run_and_foreign_folders(tiny_preset, tmp_path):
    job = jobs(load_preset(tiny_preset), "cpu", tmp_path)[0]
    report = run_sweep([job], isolate=True, log=quiet)  # a fresh process per run
    assert report.trained == [job.name]
    # The same folder asked for with another recipe is refused, not silently reused.
    other = jobs(load_preset(tiny_preset), "long", tmp_path)[0]
    assert other.name == job.name
    with pytest.raises(ContsupError, match="other settings"):
        run_sweep([other], isolate=False, log=quiet)
    # A device override does not make it another configuration.
    same = jobs(load_preset(tiny_preset), "cpu", tmp_path, overrides={"device": "auto"})[0]
    assert job_state(same) == "done"


def test_failed_run_is_reported_and_sweep_goes_on(tiny_preset, tmp_path):
    first, second = jobs(load_preset(tiny_preset), "cpu", tmp_path)
    first.config.data.name = "no-such-data"
    report = run_sweep([first, second], isolate=False, log=quiet)
    assert report.failed == [first.name] and report.trained == [second.name]


def test_two_workers_run_every_job_once(tiny_preset, tmp_path):
    todo = jobs(load_preset(tiny_preset), "cpu", tmp_path)
    report = run_sweep(todo, isolate=True, log=quiet, workers=2)  # two runs at a time, each its own process
    assert sorted(report.trained) == sorted(j.name for j in todo) and not report.failed
    assert all(job_state(j) == "done" for j in todo)
    with pytest.raises(ContsupError):
        run_sweep(todo, isolate=False, log=quiet, workers=2)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_sweeps_run_ends_with_its_parent(sig, tmp_path):
    """SIGKILL of the sweep takes its training child with it; SIGINT reaches the child at once."""
    preset = tmp_path / "long.toml"
    preset.write_text(TINY.replace('context = ["E2E", "R1E"]', 'context = ["R1E"]')
                      .replace("epochs = 1", "epochs = 500"))
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "contsup", "reproduce", str(preset), "--out", str(out)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = out / "resnet8-synthetic-K2-R1E-n128-s0" / ".lock"
    deadline = time.monotonic() + 180
    while not (lock.is_file() and lock.read_text().strip()):
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    child = int(lock.read_text())
    assert child != parent.pid and _alive(child)
    parent.send_signal(sig)
    deadline = time.monotonic() + 60
    while _alive(child):
        assert time.monotonic() < deadline, "the sweep's child outlived it"
        time.sleep(0.05)
    parent.wait(timeout=60)
    with hold_run_folder(lock.parent):  # a rerun would find the folder free (no orphan holds it)
        pass


def test_an_older_sweeps_e2e_row_still_resumes(tmp_path):
    """Sweeps before E2E rows were cleaned stored a recipe's head settings in them (local_init = kaiming, which
    K = 1 never reads): such a folder is this job's, and it resumes."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.replace("[recipe.long]\n", '[recipe.long]\nlocal_init = "kaiming"\n'))
    job = jobs(load_preset(path), "long", tmp_path / "sweep")[0]
    assert job.settings["context"] == "E2E" and job.settings["local_init"] == "torch"
    folder = tmp_path / "sweep" / job.name
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({**job.settings, "local_init": "kaiming"}))
    trainer = make_trainer(job.config, load_data(job.config), build_network(job.config, 3, 10, 32))
    trainer.fit(until=1)
    payload = torch.load(folder / "checkpoint.pt", weights_only=True)
    payload["meta"]["run"]["local"]["local_init"] = "kaiming"  # as the older sweep stored it
    torch.save(payload, folder / "checkpoint.pt")
    assert job_state(job) == "resume"
    assert run_sweep([job], isolate=False, log=quiet).resumed == [job.name]
    assert [json.loads(r)["epoch"] for r in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2]
