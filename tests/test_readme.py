"""The README's Python API example runs as written (in a temporary folder) and its model learns."""

import os
import re
import runpy
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def api_example() -> str:
    """The first ```python block after the README's "## Python API" heading."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    (tmp_path / "example.py").write_text(api_example())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(os.environ, "OMP_NUM_THREADS", "1")
    scope = runpy.run_path(str(tmp_path / "example.py"))
    summary = scope["summary"]
    assert summary["epochs"] == 3 and summary["final_test_error"] < 70  # chance: 90 %
    assert (tmp_path / "runs" / "mine" / "summary.json").is_file()
    assert scope["net"].num_modules == 4 and summary["params"]["context"] > 0
    again = runpy.run_path(str(tmp_path / "example.py"))["summary"]  # rerun as written: the finished run, re-read
    assert again["final_test_error"] == summary["final_test_error"] and again["epochs"] == 3


def own_model_example() -> str:
    """The first ```python block after the README's "## Bring your own model" heading."""
    text = README.read_text()
    section = text[text.index("## Bring your own model"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_the_bring_your_own_model_example_runs(tmp_path, monkeypatch, capsys):
    """The README's example on an unmodified Sequential and real data: cut where the comment says, and it learns."""
    (tmp_path / "own.py").write_text(own_model_example())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(os.environ, "OMP_NUM_THREADS", "1")
    scope = runpy.run_path(str(tmp_path / "own.py"))
    said = re.search(r"print\(net.cut_names\)  # (\[.*?\])", own_model_example()).group(1)
    assert capsys.readouterr().out.splitlines()[0] == said == str(scope["net"].cut_names)
    assert scope["net"].num_modules == 4 and scope["summary"]["epochs"] == 1
    assert scope["summary"]["final_test_error"] < 50  # chance: 90 %
    assert (tmp_path / "runs" / "own" / "summary.json").is_file()
