import json
from collections import Counter

from contsup.reproduce.presets import jobs, load_preset
from contsup.reproduce.sweep import run_sweep


def test_protocol_grid_and_budget(tmp_path):
    todo = jobs(load_preset("protocol"), "cpu", tmp_path)
    cells = Counter((j.settings["modules"], j.settings["context"], j.settings["recon"]) for j in todo)
    expected = {(1, "E2E", None)} | {(16, c, "none") for c in ("R0", "E", "R1", "R1E")} | {(16, "R0", "paper")}
    expected |= {(k, c, "none") for k in (2, 4, 8) for c in ("R0", "R1E")}
    assert set(cells) == expected and set(cells.values()) == {3}  # three seeds in every cell
    budgets = {(j.config.train.epochs, j.config.train.batch_size, j.config.train.lr, j.config.data.train_subset,
                j.config.data.val_split, j.config.train.schedule) for j in todo}
    assert len(budgets) == 1  # one budget for every method
    assert todo[0].settings["context"] == "E2E" and todo[3].settings["context"] == "R0"  # the headline runs first
    paper = jobs(load_preset("protocol"), "paper", tmp_path)  # the paper's code: schedule and initialisation
    assert {(j.config.train.schedule, j.config.local.local_init, j.config.local.context_scale) for j in paper
            if j.config.local.modules > 1} == {("epoch", "kaiming", 1.0)}  # E2E has no head or encoder to initialise


def test_one_tiny_protocol_config_runs(tmp_path):
    tiny = {"dataset": "synthetic", "arch": "resnet8", "train_subset": 96, "val_split": 32, "epochs": 1,
            "batch_size": 32, "device": "cpu", "cut_table": "auto"}
    [job] = jobs(load_preset("protocol"), "cpu", tmp_path, seeds=[0], only={"context": ["R1E"], "modules": ["2"]},
                 overrides=tiny)
    report = run_sweep([job], isolate=False, log=lambda _: None)
    assert report.trained == [job.name]
    summary = json.loads((tmp_path / job.name / "summary.json").read_text())
    assert summary["epochs"] == 1 and "final_val_error" in summary
