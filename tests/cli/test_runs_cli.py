import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import cli_error, snapshot

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


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    """A finished one-epoch run folder, as train writes it."""
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--arch", "resnet8", "--modules", "2", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name,content,message", [
    ("summary.json", b"[1, 2]", "a JSON object was expected, not list"),
    ("summary.json", b'"an error"', "a JSON object was expected, not str"),
    ("summary.json", b"{}", "epochs is missing"),
    ("summary.json", b"\xff\xfe{}", "not UTF-8"),
    ("summary.json", b'{"epochs": ', "cannot read run summary"),
    ("summary.json", b"SUMMARY:final_test_error=NaN", "NaN is not JSON"),
    ("summary.json", b"SUMMARY:final_test_error=-1", "final_test_error is -1"),
    ("summary.json", b"SUMMARY:meta=[]", "meta is []"),
    ("summary.json", b"SUMMARY:params={}", "params lacks"),
    ("metrics.jsonl", b"[1]\n", "a JSON object was expected, not list"),
    ("metrics.jsonl", b'{"epoch": 1}\n', "test_error is missing"),
    ("metrics.jsonl", b"\x80\n", "not UTF-8"),
    ("metrics.jsonl", b"ROW:epoch=3", "its epoch is not 1"),
    ("metrics.jsonl", b'ROW:local_losses=["a"]', "its losses are not numbers"),
])
def test_malformed_run_files_one_line(name, content, message, one_run, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(one_run, run)
    for tag, file in ((b"SUMMARY:", "summary.json"), (b"ROW:", "metrics.jsonl")):
        if content.startswith(tag):  # one field of the real file replaced
            key, value = content[len(tag):].decode().split("=", 1)
            obj = json.loads((run / file).read_text().splitlines()[0] if file == "metrics.jsonl" else
                             (run / file).read_text())
            obj[key] = json.loads(value)  # Python's json reads NaN, and writes it back
            content = json.dumps(obj).encode() + b"\n"
    (run / name).write_bytes(content)
    before = snapshot(tmp_path)
    assert message in cli_error(capsys, ["runs", str(run), "--out", str(tmp_path / "report")])
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["r"]
