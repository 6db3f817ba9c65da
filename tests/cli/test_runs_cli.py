import json

from contsup.cli import main

TINY = ["--data", "synthetic", "--arch", "resnet20", "--train-subset", "128", "--batch-size", "64", "--lr", "0.05",
        "--device", "cpu", "--no-progress", "--epochs", "1"]


def test_runs_reads_what_train_writes(tmp_path, capsys):
    assert main(["train", *TINY, "--modules", "4", "--context", "R1", "--out", str(tmp_path / "runs" / "k4")]) == 0
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads((tmp_path / "runs" / "k4" / "summary.json").read_text())
    k4 = next(line for line in lines if line.lstrip().startswith("k4"))
    assert "R1 K=4" in k4 and f"{summary['final_test_error']:.2f}" in k4
    assert f"{summary['step_peak_memory_bytes'] / 2**20:.1f}" in k4  # the step memory the trainer measured
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"runs.csv", "runs.md", "curves.png",
                                                                 "error-vs-memory.png"}


def test_runs_on_a_folder_without_runs_is_one_line_exit_2(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 2
    assert "holds no run folder" in capsys.readouterr().err
