"""The `parallel` preset expands, and a tiny sweep of its kinds of runs feeds benchmarks/parallel.py's table and
figure (docs/parallel.md); the real measurements need a quiet machine."""

import json
import subprocess
import sys
from pathlib import Path

from contsup.reproduce.presets import jobs, load_preset
from contsup.reproduce.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[2]

TINY = """
title = "tiny parallel"
[base]
arch = "resnet8"
dataset = "synthetic"
train_subset = 64
val_split = 32
epochs = 2
batch_size = 16
lr = 0.05
micro_batches = 2
[[grid]]
context = ["E2E"]
parallel = ["1f1b"]
ranks = [2]
threads = [1]
[[grid]]
modules = [2]
context = ["R1E"]
ranks = [1]
threads = [1]
[recipe.cpu]
device = "cpu"
"""


def test_parallel_preset_names_every_way_apart(tmp_path):
    todo = jobs(load_preset("parallel"), "cpu", tmp_path)  # two ways under one folder name would raise
    ways = {(j.config.arch, j.config.local.modules, j.config.pipeline.parallel, j.config.pipeline.ranks) for j in todo}
    assert ("resnet32", 16, "local", 2) in ways and ("resnet32", 1, "1f1b", 2) in ways
    assert ("vit-mini-p7", 1, "ddp", 2) in ways and ("vit-mini-p7", 4, "local", 1) in ways
    assert all(j.config.pipeline.threads * j.config.pipeline.ranks == 2 for j in todo)  # the same 2 cores


def test_tiny_sweep_gives_the_table_and_the_figure(tmp_path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY)
    todo = jobs(load_preset(preset), "cpu", tmp_path / "sweep")
    report = run_sweep(todo, log=lambda line: None)
    assert not report.failed and len(report.trained) == 2
    ranks = json.loads((tmp_path / "sweep" / todo[0].name / "ranks.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and all(0 < r["busy_s"] < r["wall_s"] for r in ranks)
    script = [sys.executable, str(ROOT / "benchmarks" / "parallel.py"), "--sweep", str(tmp_path / "sweep"),
              "--out", str(tmp_path / "doc"), "--targets", "100,1"]
    out = subprocess.run(script, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""}).stdout
    rows = [line for line in out.splitlines() if line.startswith("| resnet8")]
    assert len(rows) == 2
    assert "| E2E | 1f1b M=2 | 2 x 1 |" in out and "| K=2 R1E | local | 1 x 1 |" in out
    for row in rows:  # every run reaches 100 % at its first epoch's end; none reaches 1 %
        tta_100, tta_1 = row.strip(" |").split(" | ")[-2:]
        assert float(tta_100) > 0 and tta_1 == "— (0/1 seeds)"
    assert (tmp_path / "doc" / "parallel.png").stat().st_size > 0
    assert "parallel-measured:begin" in (tmp_path / "doc" / "parallel.md").read_text()
