"""The GPU check's CPU path (`make gpu-check` on a machine without CUDA), so the script cannot rot."""

from __future__ import annotations

import json

import pytest
from benchmarks import gpu_check


def test_every_check_runs_its_cpu_path(tmp_path):
    assert gpu_check.main(["--cpu", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    checks = summary["checks"]
    assert list(checks) == list(gpu_check.CHECKS)
    assert {name for name, r in checks.items() if r["outcome"] == "skipped"} == {"peaks", "pipeline"}
    assert checks["epoch"]["numbers"]["images"] == 64 and checks["epoch"]["numbers"]["step_peak_mib"] > 0
    memory = checks["memory"]["numbers"]["rows"]
    assert {(r["K"], r["context"]) for r in memory} == {
        (1, "E2E"), (1, "E2E (ckpt 8)"), (16, "R0"), (16, "R0 (ckpt 8)"), (16, "R1E"), (16, "R1E (ckpt 8)")}
    assert set(checks["heads"]["numbers"]["last_loss"]) == {*gpu_check.HEAD_SETTINGS,
                                                            *(f"vit {h}" for h in gpu_check.TOKEN_HEADS)}
    assert "| epoch | passed |" in (tmp_path / "summary.md").read_text()
    assert gpu_check.main(["--cpu", "--out", str(tmp_path), "--only", "epoch"]) == 0  # again, into the same folder


def test_an_unknown_check_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--only", "epoch,warp"])
    assert "unknown check(s) warp" in capsys.readouterr().err
