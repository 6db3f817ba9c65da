"""benchmarks/cut_scan.py: every candidate cut of a K = 2 network timed, the balanced one named."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cut_scan_names_the_cut_whose_slower_step_is_fastest():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cut_scan.py"), "--arch", "resnet8",
                          "--batch-size", "8", "--repeats", "1"], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""}).stdout
    rows = [line.strip("| ").split(" | ") for line in out.splitlines() if re.match(r"\| \d\.\d \(unit \d+\)", line)]
    assert [r[0] for r in rows] == ["0.0 (unit 0)", "1.0 (unit 1)", "2.0 (unit 2)"]  # every cut but after the last unit
    assert all(float(r[3]) == max(float(r[1]), float(r[2])) for r in rows)
    fastest = min(float(r[3]) for r in rows)  # the named cut's slower step is the least (ties: any of them)
    named = re.fullmatch(r"balanced: cut after (\S+) \(--cuts \1\), the slower step (\S+) ms", out.splitlines()[-1])
    assert named and float(named[2]) == fastest
    assert any(r[0].split()[0] == named[1] and float(r[3]) == fastest for r in rows)
