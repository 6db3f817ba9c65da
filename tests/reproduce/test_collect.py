import csv
import json

import matplotlib.image as mpimg
import pytest

from contsup.config import head_settings
from contsup.reproduce.collect import aggregate, collect, collect_rows
from contsup.reproduce.presets import jobs, load_preset


def fake_summary(error: float, memory_mib: float) -> dict:
    """A summary.json as the trainer writes it, with chosen numbers."""
    return {"final_test_error": error, "best_test_error_selected_on_test": error - 1, "best_epoch": 1,
            "epochs": 2,
            "train_time_s": 10.0, "images_per_s": 100.0, "peak_memory_bytes": memory_mib * 2**20,
            "peak_memory_kind": "process peak RSS", "device": "cpu",
            "params": {"backbone": 1, "heads": 1, "decoders": 0, "context": 5, "total": 7}}


@pytest.fixture
def finished(tmp_path):
    """table2's cpu runs for K = 2, 16 with E2E, two seeds, with made-up summaries (one run unfinished)."""
    todo = jobs(load_preset("ablation"), "cpu", tmp_path, seeds=[0, 1],
                only={"context": ["E2E", "R0", "R1E"], "modules": ["1", "2", "16"]})
    for i, job in enumerate(todo):
        if job.name.startswith("resnet32-fashion-mnist-K16-R1E") and job.settings["seed"] == 1:
            continue  # unfinished
        folder = tmp_path / job.name
        folder.mkdir()
        error = {"E2E": 10.0, "R0": 20.0, "R1E": 12.0}[job.settings["context"]] + job.settings["seed"]
        (folder / "summary.json").write_text(json.dumps(fake_summary(error, 100.0 + i)))
    return todo


def test_rows_and_mean_over_seeds(finished):
    rows = collect_rows(finished)
    assert len(rows) == len(finished) - 1
    aggs = {(a["modules"], a["context"]): a for a in aggregate(rows)}
    assert set(aggs) == {(1, "E2E"), (2, "R0"), (2, "R1E"), (16, "R0"), (16, "R1E")}
    assert aggs[(2, "R0")]["n"] == 2
    assert aggs[(2, "R0")]["final_test_error"] == pytest.approx(20.5)
    assert aggs[(2, "R0")]["final_test_error_std"] == pytest.approx(0.7071, abs=1e-3)
    assert aggs[(16, "R1E")]["n"] == 1 and aggs[(16, "R1E")]["final_test_error_std"] == 0.0


def test_collect_writes_csv_markdown_and_plots(finished, tmp_path):
    result = collect(finished, tmp_path / "results", "ablation-cpu", "Ablation")
    assert result["runs"] == len(finished) - 1
    with open(result["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["runs"]
    assert {"run", "context", "modules", "seed", "final_test_error", "peak_memory_mib"} <= set(rows[0])
    text = open(result["markdown"]).read()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 5  # header, rule, five configurations
    assert "20.50 ± 0.71" in text and "process peak RSS" in text
    assert "Budget of every run: dataset = fashion-mnist" in text and "epochs = 2" in text
    assert "final val error" not in text  # no run held out a validation split
    for key in ("error_vs_k", "error_vs_memory"):
        image = mpimg.imread(result[key])
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_collect_with_nothing_finished(tmp_path):
    todo = jobs(load_preset("table1"), "cpu", tmp_path)
    result = collect(todo, tmp_path / "results", "table1-cpu")
    assert result["runs"] == 0
    with open(result["csv"]) as f:
        assert list(csv.DictReader(f)) == []
    assert "0 of 5 runs finished" in open(result["markdown"]).read()


def test_val_error_is_collected_and_averaged(finished, tmp_path):
    for job in finished:
        path = tmp_path / job.name / "summary.json"
        if path.is_file():
            summary = json.loads(path.read_text())
            path.write_text(json.dumps({**summary, "final_val_error": 30.0 + job.settings["seed"]}))
    result = collect(finished, tmp_path / "results", "ablation-cpu")
    with open(result["csv"]) as f:
        assert {float(r["final_val_error"]) for r in csv.DictReader(f)} == {30.0, 31.0}
    assert "final val error %" in open(result["markdown"]).read() and "30.50 ± 0.71" in open(result["markdown"]).read()


def test_step_peak_column_when_runs_measured_it(finished, tmp_path):
    """Runs whose summary has the measured step peak get it in the CSV and the table; older runs show '-'."""
    for i, job in enumerate(finished):
        path = tmp_path / job.name / "summary.json"
        if path.is_file() and job.settings["context"] == "R0":
            summary = json.loads(path.read_text())
            path.write_text(json.dumps({**summary, "step_peak_memory_bytes": (40 + i) * 2**20}))
    rows = {r["run"]: r for r in collect_rows(finished)}
    assert {r["step_peak_mib"] is None for r in rows.values() if r["context"] != "R0"} == {True}
    assert all(r["step_peak_mib"] >= 40 for r in rows.values() if r["context"] == "R0")
    text = open(collect(finished, tmp_path / "results", "ablation-cpu", "Ablation")["markdown"]).read()
    assert "step peak MiB" in text and "| - |" in text


def test_e2e_rows_show_no_local_settings(finished):
    from contsup.reproduce.collect import markdown

    rows = collect_rows(finished)
    for r in rows:  # reconstruction varies between the local-learning rows, so it becomes a column
        r["recon"] = "paper" if r["context"] == "R0" else None
    lines = markdown(aggregate(rows)).splitlines()
    assert "| K | method | recon |" in lines[next(i for i, x in enumerate(lines) if x.startswith("| K"))]
    assert any(x.startswith("| 1 | E2E | - |") for x in lines)
    assert any(x.startswith("| 2 | R0 | paper |") for x in lines)
    assert any(x.startswith("| 2 | R1E | None |") for x in lines)


def unlike(value):
    """A value of a setting's type unlike `value` (rows are not checked against the schema here)."""
    if isinstance(value, bool):
        return not value
    return value * 2 + 1 if isinstance(value, (int, float)) else f"{value}-other"


@pytest.mark.parametrize("key", head_settings())
def test_runs_that_differ_only_in_a_head_setting_are_not_averaged_together(finished, key):
    """Every head setting of the schema (MAN's start and scale, AugLocal's pyramid, the widths, ...) keeps runs
    apart, and becomes a column where it varies."""
    from contsup.reproduce.collect import markdown

    row = next(dict(r) for r in collect_rows(finished) if r["context"] == "R0")
    aggs = aggregate([row, dict(row, **{key: unlike(row[key])})])
    assert len(aggs) == 2 and all(a["n"] == 1 for a in aggs)
    header = next(x for x in markdown(aggs).splitlines() if x.startswith("| K"))
    assert f"| {key} |" in header


def test_a_sweep_split_over_machines_keeps_the_earlier_collects_rows(finished, tmp_path):
    """Run folders of the first part are gone (another machine); the earlier CSV's numbers stay, typed."""
    import shutil

    from contsup.errors import ContsupError

    results = tmp_path / "results"
    collect(finished, results, "ablation-cpu", "Ablation")
    before = {r["run"]: r for r in csv.DictReader(open(results / "ablation-cpu.csv"))}
    gone = finished[0]
    shutil.rmtree(tmp_path / gone.name)
    summary = collect(finished, results, "ablation-cpu", "Ablation")
    after = {r["run"]: r for r in csv.DictReader(open(results / "ablation-cpu.csv"))}
    assert after == before and summary["runs"] == len(before)
    assert "(1 read from the earlier ablation-cpu.csv" in open(results / "ablation-cpu.md").read()
    (results / "ablation-cpu.csv").write_text("run,final_test_error\n" + gone.name + ",not-a-number\n")
    with pytest.raises(ContsupError, match="does not parse"):
        collect(finished, results, "ablation-cpu", "Ablation")
