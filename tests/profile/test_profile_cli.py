import csv
import json

import pytest

from contsup.cli import main


def test_profile_writes_table_csv_json_and_plot(capsys, tmp_path):
    out = tmp_path / "prof"
    args = ["profile", "--arch", "resnet20", "-K", "1,2", "--contexts", "R1E", "--batch-size", "8",
            "--input", "3x8x8", "--warmup", "1", "--steps", "1", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "peak MiB" in text and "step ms" in text
    rows = list(csv.DictReader(open(out / "profile.csv")))
    assert [(r["modules"], r["context"]) for r in rows] == [("1", "E2E"), ("2", "R1E")]
    assert all(int(r["peak_bytes"]) > 0 and float(r["step_ms"]) > 0 for r in rows)
    data = json.loads((out / "profile.json").read_text())
    assert len(data["rows"]) == 2 and "machine" in data["meta"]
    assert data["rows"][1]["params"]["context"] > 0 == data["rows"][0]["params"]["context"]
    assert (out / "profile.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("bad", [["--input", "3x16"], ["-K", "a,b"], ["--batch-size", "0"]])
def test_bad_flags_are_one_line_errors(capsys, bad):
    assert main(["profile", "--device", "cpu", *bad]) == 2
    assert capsys.readouterr().err.startswith("contsup: error:")
