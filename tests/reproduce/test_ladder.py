import importlib.util
from collections import Counter
from pathlib import Path

from contsup.reproduce.presets import jobs, load_preset

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "ladder.py"


def _driver():
    spec = importlib.util.spec_from_file_location("ladder_driver", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _method(job):
    return job.settings["context"], job.settings["head"]


def test_ladder_recipes_differ_from_the_measured_rungs_only_in_epochs(tmp_path):
    ladder = load_preset("ladder")
    assert {r: ladder.recipes[r]["epochs"] for r in ladder.recipes} == {"cpu": 2, "cpu-4ep": 4, "cpu-8ep": 8}
    two = {j.name: j.settings for j in jobs(ladder, "cpu", tmp_path)}
    assert Counter(_method(j) for j in jobs(ladder, "cpu", tmp_path)) == {
        ("E2E", "1c2f"): 3, ("R1E", "1c2f"): 3, ("E", "auglocal"): 3, ("R0", "auglocal"): 3}
    # The 2-epoch rung is the protocol and heads presets' runs: same names, same settings.
    measured = {j.name: j.settings for p in ("protocol", "heads") for j in jobs(load_preset(p), "cpu", tmp_path)}
    assert all(measured[name] == s for name, s in two.items())
    # E2E and R1E at 4 epochs are the protocol's cpu-long runs.
    long = {j.name: j.settings for j in jobs(load_preset("protocol"), "cpu-long", tmp_path)}
    for job in jobs(ladder, "cpu-4ep", tmp_path, only={"context": ["E2E", "R1E"]}):
        assert long[job.name] == job.settings
    for recipe, epochs in (("cpu-4ep", 4), ("cpu-8ep", 8)):
        for job in jobs(ladder, recipe, tmp_path):
            assert job.settings == {**two[job.name], "epochs": epochs}


def test_driver_runs_the_unmeasured_rungs_minimum_answer_first(tmp_path):
    todo = _driver().ladder_jobs(tmp_path)
    got = [(Path(j.config.out).parent.name, j.settings["context"], j.settings["head"], j.settings["seed"])
           for j in todo]
    want = [(r, c, h, s) for r, c, h in [("cpu-8ep", "E2E", "1c2f"), ("cpu-4ep", "E", "auglocal"),
                                         ("cpu-8ep", "E", "auglocal"), ("cpu-4ep", "R0", "auglocal"),
                                         ("cpu-8ep", "R0", "auglocal"), ("cpu-8ep", "R1E", "1c2f")]
            for s in (0, 1, 2)]
    assert got == want
    assert all(j.config.train.epochs == int(Path(j.config.out).parent.name[4]) for j in todo)


def test_man_preset_chooses_the_momentum_of_man_as_published(tmp_path):
    """Seed 0 of every momentum with and without MAN++'s scale, the chosen one with 3 seeds, and the same InfoPro
    run without the copies (the control) with 3 seeds; every run MAN's published head, reconstruction and
    schedule."""
    todo = jobs(load_preset("man"), "cpu", tmp_path)
    assert sorted((j.settings["man_momentum"], j.settings["man_scale"], j.settings["seed"]) for j in todo) == [
        (0.0, False, 0), (0.0, False, 1), (0.0, False, 2), (0.9, False, 0), (0.9, True, 0), (0.95, False, 0),
        (0.95, True, 0), (0.95, True, 1), (0.95, True, 2), *((m, s, 0) for m in (0.98, 0.995) for s in (False, True))]
    for job in todo:
        local = job.config.local
        assert (local.head, local.recon, local.recon_schedule, local.modules, local.context) == (
            "2c2f", "5,0.5,0,0", "stage", 16, "R0")
        assert job.config.train.epochs == 2
    assert len({j.name for j in todo}) == len(todo) == 13 and all("recon-5_0.5_0_0-by-stage" in j.name for j in todo)


def test_figure_reads_each_rung_from_its_csvs(tmp_path):
    """Rows are picked by run name and epochs: protocol-cpu-long's E2E is the 4-epoch rung, not the 2-epoch one."""
    driver = _driver()
    e2e = "resnet32-fashion-mnist-K1-E2E-n10000-s{}"
    header = "run,epochs,final_test_error,final_val_error\n"
    (tmp_path / "protocol-cpu.csv").write_text(header + f"{e2e.format(0)},2,19.0,18.0\n{e2e.format(1)},2,21.0,20.0\n"
                                               + "resnet32-fashion-mnist-K16-R0-n10000-s0,2,28.0,28.0\n")
    (tmp_path / "protocol-cpu-long.csv").write_text(header + f"{e2e.format(0)},4,14.0,13.0\n")
    (tmp_path / "ladder-cpu-4ep.csv").write_text(
        header + "resnet32-fashion-mnist-K16-E-auglocal-n10000-s0,4,17.5,17.0\n")
    errors = driver.rung_errors(tmp_path)
    assert errors["E2E"] == {2: [(19.0, 18.0), (21.0, 20.0)], 4: [(14.0, 13.0)]}
    assert errors["E + AugLocal"] == {4: [(17.5, 17.0)]} and errors["R1E (1c2f)"] == {}
    driver.figure(tmp_path)
    table = (tmp_path / "ladder.md").read_text()
    assert "| E2E | 2 | 2 | 20.00 ± 1.41 | 19.00 ± 1.41 |  |" in table
    assert "| E + AugLocal | 4 | 1 | 17.50 | 17.00 | +3.50 |" in table and (tmp_path / "ladder.png").is_file()
