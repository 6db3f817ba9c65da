import json

import pytest

from contsup.errors import ContsupError
from contsup.reproduce.presets import jobs, load_preset
from contsup.reproduce.sweep import job_state, run_sweep
from contsup.run import build_network, load_data, make_trainer


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
