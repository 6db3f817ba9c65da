import json

import matplotlib.image as mpimg
import pytest

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.reproduce.compare import find_runs, format_runs, read_run, result_rows, varying_settings, write_report
from contsup.run import RunConfig
from contsup.train.trainer import TrainConfig


def make_run(folder, modules, context, lr, errors, finished=True, step_mib=None):
    """A run folder as the trainer writes it (summary.json only when `finished`), with chosen numbers."""
    folder.mkdir(parents=True)
    cfg = RunConfig(local=LocalConfig(modules=modules, context=context), train=TrainConfig(epochs=len(errors), lr=lr))
    history = [{"epoch": i + 1, "lr": lr, "train_loss": 2.0 / (i + 1), "local_losses": [1.5] * (modules - 1),
                "test_error": e, "epoch_time": 5.0, "peak_memory_bytes": 300 * 2**20} for i, e in enumerate(errors)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    if finished:
        summary = {"final_test_error": errors[-1], "best_test_error_selected_on_test": min(errors),
                   "best_epoch": errors.index(min(errors)) + 1, "epochs": len(errors), "train_time_s": 10.0,
                   "images_per_s": 50.0, "peak_memory_bytes": 400 * 2**20, "peak_memory_kind": "process peak RSS",
                   "device": "cpu", "params": {"total": 7, "context": 0}, "meta": {"run": cfg.to_dict()}}
        if step_mib is not None:
            summary |= {"step_peak_memory_bytes": step_mib * 2**20, "step_peak_memory_kind": "cpu allocator events"}
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def runs(tmp_path):
    """E2E, K=4 R1E at lr 0.1 and 0.2 (finished, with step memory) and one unfinished K=4 R0 run."""
    make_run(tmp_path / "all" / "e2e", 1, "R1E", 0.1, [30.0, 20.0, 25.0], step_mib=200)
    make_run(tmp_path / "all" / "r1e", 4, "R1E", 0.1, [40.0, 30.0], step_mib=80)
    make_run(tmp_path / "all" / "r1e-lr2", 4, "R1E", 0.2, [45.0, 35.0], step_mib=80)
    make_run(tmp_path / "all" / "r0", 4, "R0", 0.1, [50.0], finished=False)
    return tmp_path / "all"


def test_rows_errors_memory_and_differing_settings(runs):
    records = [read_run(f) for f in find_runs([runs])]
    assert [r.method for r in records] == ["E2E", "K=4", "R1E K=4", "R1E K=4"]
    # lr and epochs differ; the context belongs to the method; head etc. are absent from the E2E run only.
    assert varying_settings(records) == ["epochs", "lr"]
    rows = {r["run"]: r for r in result_rows(records)}
    assert rows["e2e"]["final_test_error"] == 25.0 and rows["e2e"]["best_test_error_selected_on_test"] == 20.0
    assert rows["e2e"]["best_epoch"] == 2 and rows["e2e"]["step_peak_memory_mib"] == 200
    assert "head" not in rows["e2e"] and rows["r1e"]["head"] == "1c2f"
    # An unfinished run is summarised from its metrics so far (K from its losses), marked, no step memory.
    assert rows["r0"]["finished"] is False and rows["r0"]["final_test_error"] == 50.0
    assert rows["r0"]["train_time_s"] == 5.0 and "step_peak_memory_mib" not in rows["r0"]
    text = format_runs(list(rows.values()), ["epochs", "lr"])
    assert "r0 (unfinished)" in text and "20.00 (2)" in text and "200.0" in text


def test_find_runs_accepts_files_and_folders_of_runs(runs):
    assert find_runs([runs / "e2e" / "summary.json", runs / "e2e"]) == [runs / "e2e"]
    assert len(find_runs([runs])) == 4
    (runs.parent / "empty").mkdir()
    with pytest.raises(ContsupError, match="holds no run folder"):
        find_runs([runs.parent / "empty"])
    with pytest.raises(ContsupError, match="does not exist"):
        find_runs([runs / "missing"])


def test_report_files(runs, tmp_path):
    records = [read_run(f) for f in find_runs([runs / "e2e", runs / "r1e", runs / "r1e-lr2"])]
    paths = write_report(records, tmp_path / "report", "demo")
    assert "| e2e | E2E |" in paths["markdown"].read_text()
    assert len(paths["csv"].read_text().splitlines()) == 1 + 3
    for key in ("curves", "error_vs_memory"):
        image = mpimg.imread(paths[key])
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_curves_of_a_one_epoch_run_are_lines_from_its_slices(tmp_path, monkeypatch):
    import contsup.reproduce.compare as runs_module

    folder = make_run(tmp_path / "one", 2, "R1E", 0.1, [40.0])
    row = json.loads((folder / "metrics.jsonl").read_text())
    row["curve"] = [[(j + 1) / 8, 2.0 - j / 10, 2.5 - j / 10] for j in range(8)]
    (folder / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    figures = []
    monkeypatch.setattr(runs_module, "save_figure", lambda fig, path, dpi: figures.append(fig))
    runs_module.plot_curves([read_run(folder)], tmp_path / "curves.png")
    lines = figures[0].axes[1].get_lines()  # the run's panel: one line per module
    assert [list(line.get_xdata()) for line in lines] == [[(j + 1) / 8 for j in range(8)]] * 2
    assert list(lines[1].get_ydata()) == [2.5 - j / 10 for j in range(8)]
