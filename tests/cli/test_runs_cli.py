import json

from contsup.cli import main

TINY = ["--data", "synthetic", "--arch", "resnet20", "--train-subset", "128", "--batch-size", "64", "--lr", "0.05",
        "--device", "cpu", "--no-progress", "--epochs", "1"]


def test_runs_reads_what_train_writes(tmp_path, capsys):
    for name, flags in (("e2e", ["--modules", "1"]), ("k4", ["--modules", "4", "--context", "R1"])):
        assert main(["train", *TINY, *flags, "--out", str(tmp_path / "runs" / name)]) == 0
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads((tmp_path / "runs" / "k4" / "summary.json").read_text())
    k4 = next(line for line in lines if line.lstrip().startswith("k4"))
    assert "R1 K=4" in k4 and f"{summary['final_test_error']:.2f}" in k4
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"runs.csv", "runs.md", "curves.png",
                                                                 "error-vs-memory.png"}


def test_runs_on_a_folder_without_runs_is_one_line_exit_2(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 2
    assert "holds no run folder" in capsys.readouterr().err
