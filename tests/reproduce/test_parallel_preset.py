"""The `parallel` and `parallel_throughput` presets expand, and benchmarks/parallel.py composes time-to-accuracy
from their run folders (docs/parallel.md): on hand-made folders with known numbers, and on a tiny real sweep."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from contsup.config import DataConfig, LocalConfig, PipelineConfig, RunConfig, TrainConfig
from contsup.reproduce.presets import jobs, load_preset
from contsup.reproduce.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    """benchmarks/parallel.py as a module (its folder on the path, for `docregion`)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("parallel_bench", ROOT / "benchmarks" / "parallel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parallel_presets_run_each_computation_once_and_time_every_way(tmp_path, bench):
    curves = jobs(load_preset("parallel"), "cpu", tmp_path / "c")
    clocks = jobs(load_preset("parallel_throughput"), "cpu", tmp_path / "t")
    runs = {j.name: json.loads(json.dumps(j.config.to_dict())) for j in [*curves, *clocks]}
    computed = {j.name: bench.computation(runs[j.name]) for j in [*curves, *clocks]}
    per_seed = [computed[j.name] for j in curves if j.config.train.seed == 0]
    assert len(per_seed) == len(set(per_seed)) == 10  # no two curve runs compute the same thing
    assert all(j.config.pipeline.ranks == 1 for j in curves)
    for j in clocks:  # every way timed has its curve, on 2 cores
        assert computed[j.name] in per_seed, j.name
        assert j.config.pipeline.threads * j.config.pipeline.ranks == 2 and j.config.train.epochs == 2
    ways = {(j.config.arch, j.config.local.modules, j.config.pipeline.parallel, j.config.pipeline.ranks)
            for j in clocks}
    assert ("resnet32", 16, "local", 2) in ways and ("resnet32", 1, "zbv", 2) in ways
    assert ("vit-mini-p7", 1, "ddp", 2) in ways and ("vit-mini-p7", 4, "local", 1) in ways
    balanced = [j for j in clocks if j.config.local.cuts]  # K = 2 R0 cut by time, on ranks and in one process
    assert [(j.config.local.cuts, j.config.pipeline.ranks) for j in balanced] == [("1.4", 2), ("1.4", 1)]
    assert "K=2 R0 cut 1.4 | local | 2 x 1" in bench.way(runs[balanced[0].name])


def fake_run(folder: Path, cfg: RunConfig, times: list[float], val: list[float], ranks: int = 1,
             rate: float = 100.0) -> None:
    """A finished run folder with the given epoch training seconds, validation errors and images/s."""
    folder.mkdir(parents=True)
    rows = [{"epoch": e + 1, "epoch_time": t, "val_error": v, "test_error": v + 1} for e, (t, v) in
            enumerate(zip(times, val, strict=True))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"final_test_error": val[-1] + 1, "final_val_error": val[-1], "images_per_s": rate,
               "peak_memory_bytes": 2**30, "meta": {"run": cfg.to_dict()}}
    (folder / "summary.json").write_text(json.dumps(summary))
    if ranks > 1:
        (folder / "ranks.json").write_text(json.dumps([{"rank": r, "peak_rss_bytes": (r + 1) * 2**20, "busy_s": 3.0,
                                                        "wall_s": 4.0} for r in range(ranks)]))


def config(arch: str = "resnet8", parallel: str = "local", ranks: int = 1, threads: int = 1, seed: int = 0,
           epochs: int = 3, modules: int = 1) -> RunConfig:
    """A run's settings: the same data and recipe, only the placement, arch and method varied."""
    return RunConfig(DataConfig("synthetic", train_subset=64), arch, LocalConfig(modules=modules),
                     TrainConfig(epochs=epochs, batch_size=16, seed=seed),
                     PipelineConfig(parallel=parallel, micro_batches=2, ranks=ranks, threads=threads))


def test_time_to_accuracy_is_the_curve_on_the_way_s_clock(tmp_path, bench):
    c, t = tmp_path / "curves", tmp_path / "clock"
    fake_run(c / "e2e-s0", config(seed=0), [50, 50, 50], [30, 14, 9])  # the curves' own times play no part
    fake_run(c / "e2e-s1", config(seed=1), [50, 50, 50], [20, 11, 8])
    fake_run(c / "micro-s0", config(parallel="1f1b", seed=0), [60, 60, 60], [40, 20, 11])  # BatchNorm per micro-batch
    fake_run(c / "vit-s0", config("vit-mini-p8", seed=0), [70, 70, 70], [25, 13, 12])
    fake_run(c / "local-s0", config(modules=2, seed=0), [80, 80, 80], [16, 15, 14])
    fake_run(t / "one", config(threads=2, epochs=2), [10, 8], [90, 90], rate=150.0)
    fake_run(t / "ddp", config(parallel="ddp", ranks=2, epochs=2), [12, 9], [90, 90], ranks=2)
    fake_run(t / "1f1b", config(parallel="1f1b", ranks=2, epochs=2), [20, 5], [90, 90], ranks=2)
    fake_run(t / "vit-gpipe", config("vit-mini-p8", parallel="gpipe", ranks=2, epochs=3), [7, 3, 5], [90] * 3, ranks=2)
    fake_run(t / "local", config(modules=2, ranks=2, epochs=2), [30, 30], [90, 90], ranks=2)
    rows = {w["way"]: w for w in bench.ways(bench.read_runs(c), bench.read_runs(t))}
    one, ddp = rows["resnet8 | E2E | local | 1 x 2"], rows["resnet8 | E2E | ddp | 2 x 1"]
    f1b, vit = rows["resnet8 | E2E | 1f1b M=2 | 2 x 1"], rows["vit-mini-p8 | E2E | gpipe M=2 | 2 x 1"]
    assert one["composed"] == [[(10, 30), (18, 14), (26, 9)], [(10, 20), (18, 11), (26, 8)]]  # 10 + (e - 1) 8
    assert ddp["composed"] == [[(12, 30), (21, 14), (30, 9)], [(12, 20), (21, 11), (30, 8)]]  # DDP: end to end
    assert f1b["composed"] == [[(20, 40), (25, 20), (30, 11)]]  # BatchNorm: the micro-batched curve only
    assert vit["composed"] == [[(7, 25), (11, 13), (15, 12)]]  # LayerNorm: plain end to end; later = mean(3, 5)
    assert [len(rows["resnet8 | K=2 R1E | local | 2 x 1"]["composed"])] == [1]
    text = bench.table(list(rows.values()), [15.0, 12.0, 10.0])
    line = next(x for x in text.splitlines() if x.startswith("| resnet8 | E2E | local | 1 x 2 |"))
    assert line.split(" | ")[-3:] == ["18.0 ± 0.0", "22.0 ± 5.7", "26.0 ± 0.0 |"]  # 12 %: 26 (seed 0) and 18 (seed 1)
    assert "| 150.0 | 1.50 | 10.0 / 8.0 |" in line  # its images/s over its backbone's 1F1B on 2 ranks (100)
    assert "| 100.0 | — | 7.0 / 4.0 |" in text  # the ViT's GPipe: no 1F1B of its backbone timed
    line = next(x for x in text.splitlines() if x.startswith("| resnet8 | E2E | 1f1b M=2 | 2 x 1 |"))
    assert line.split(" | ")[-3:] == ["30.0", "30.0", "— (0/1 seeds) |"]
    assert "| — / — | 1 / 2 | 0.25 / 0.25 | 1 |" in line  # each rank's peaks and idle (ranks.json); one curve seed
    assert "| 100.0 | 1.00 | 20.0 / 5.0 |" in line  # images/s, over 1F1B's on 2 ranks (itself), the clock

    fake_run(tmp_path / "real", config(threads=2, seed=1), [11, 9, 8], [21, 11, 8])
    checked = bench.check([bench.read_run(tmp_path / "real")], list(rows.values())).splitlines()
    assert checked[2:] == ["| resnet8 | E2E | local | 1 x 2 | 1 | 1 | 11.0 | 10.0 | 1.100 | 21.00 | 20.00 |",
                           "| resnet8 | E2E | local | 1 x 2 | 1 | 2 | 20.0 | 18.0 | 1.111 | 11.00 | 11.00 |",
                           "| resnet8 | E2E | local | 1 x 2 | 1 | 3 | 28.0 | 26.0 | 1.077 | 8.00 | 8.00 |"]


def test_each_backbone_has_its_own_targets(tmp_path, bench):
    assert bench.parse_targets("resnet32=22,20;vit-mini-p7=60") == {"resnet32": [22.0, 20.0], "vit-mini-p7": [60.0]}
    assert bench.parse_targets("15,12") == {"": [15.0, 12.0]}
    c, t = tmp_path / "curves", tmp_path / "clock"
    fake_run(c / "e2e", config(), [50, 50, 50], [30, 14, 9])
    fake_run(c / "vit", config("vit-mini-p8"), [70, 70, 70], [25, 13, 12])
    fake_run(t / "e2e", config(threads=2, epochs=2), [10, 8], [90, 90])
    fake_run(t / "vit", config("vit-mini-p8", threads=2, epochs=2), [7, 3], [90, 90])
    rows = bench.ways(bench.read_runs(c), bench.read_runs(t))
    text = bench.tables(rows, {"resnet8": [14.0], "vit-mini-p8": [20.0, 12.0]})
    resnet, vit = text.split("\n\n")
    assert resnet.splitlines()[0].endswith("| time to 14 % (s) |") and resnet.splitlines()[2].endswith("| 18.0 |")
    assert vit.splitlines()[0].endswith("| time to 20 % (s) | time to 12 % (s) |")
    assert vit.splitlines()[2].endswith("| 10.0 | 13.0 |")  # 20 % at epoch 2 (7 + 3), 12 % at epoch 3 (7 + 2 x 3)
    assert bench.tables(rows, {"": [14.0]}).count("time to 14 %") == 2  # a plain list: every backbone
    with pytest.raises(SystemExit, match="vit-mini-p8"):
        bench.tables(rows, {"resnet8": [14.0]})
    twice = [{"way": f"resnet8 | E2E | 1f1b M={m} | 2 x 1", "thr": {"summary": {"images_per_s": 1.0}}} for m in (2, 4)]
    with pytest.raises(SystemExit, match="no one reference"):
        bench.rate_of_1f1b(twice, "resnet8")
    for bad in ("resnet32=", "resnet32=22,,20", "resnet32=22;resnet32=20", "x"):
        with pytest.raises(SystemExit, match="--targets"):
            bench.parse_targets(bad)


TINY = """
title = "tiny parallel"
[base]
arch = "resnet8"
dataset = "synthetic"
train_subset = 64
val_split = 32
batch_size = 16
lr = 0.05
micro_batches = 2
[[grid]]
context = ["E2E"]
parallel = ["1f1b"]
ranks = [{ranks}]
threads = [1]
[[grid]]
modules = [2]
context = ["R1E"]
ranks = [1]
threads = [1]
[recipe.cpu]
device = "cpu"
epochs = {epochs}
"""


def test_tiny_sweeps_give_the_table_and_the_figure(tmp_path):
    for name, ranks, epochs in (("curves", 1, 2), ("clock", 2, 2)):
        preset = tmp_path / f"{name}.toml"
        preset.write_text(TINY.format(ranks=ranks, epochs=epochs))
        report = run_sweep(jobs(load_preset(preset), "cpu", tmp_path / name), log=lambda line: None)
        assert not report.failed and len(report.trained) == 2
    clock = next(f for f in (tmp_path / "clock").iterdir() if "1f1b" in f.name)
    ranks = json.loads((clock / "ranks.json").read_text())  # the way on ranks: each rank's step peak beside its RSS
    assert [r["rank"] for r in ranks] == [0, 1] and all(0 < r["step_peak_bytes"] < r["peak_rss_bytes"] for r in ranks)
    script = [sys.executable, str(ROOT / "benchmarks" / "parallel.py"), "--curves", str(tmp_path / "curves"),
              "--throughput", str(tmp_path / "clock"), "--out", str(tmp_path / "doc"), "--targets", "100,1",
              "--check", str(clock)]  # a real run checked against its own clock: composed = measured
    out = subprocess.run(script, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""}).stdout
    table, check = out.split("Check:")
    rows = [line for line in table.splitlines() if line.startswith("| resnet8")]
    assert len(rows) == 2
    assert "| E2E | 1f1b M=2 | 2 x 1 |" in out and "| K=2 R1E | local | 1 x 1 |" in out
    for row in rows:  # each way found its one-seed curve; every run reaches 100 % at its first epoch's end
        cells = row.strip(" |").split(" | ")
        assert cells[10] == "1" and float(cells[-2]) > 0 and cells[-1] == "— (0/1 seeds)"
    checked = [line.split(" | ") for line in check.splitlines() if line.startswith("| resnet8")]
    assert [(c[5], c[8]) for c in checked] == [("1", "1.000"), ("2", "1.000")]  # epoch, measured / composed
    assert (tmp_path / "doc" / "parallel.png").stat().st_size > 0
    assert "parallel-measured:begin" in (tmp_path / "doc" / "parallel.md").read_text()
