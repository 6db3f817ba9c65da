import csv

import pytest

from contsup.cli import main

TRAIN = ["train", "--data", "synthetic", "--arch", "resnet8", "--train-subset", "64", "--batch-size", "64",
         "--lr", "0.05", "--device", "cpu", "--no-progress", "--epochs", "1"]
FAST = ["--train-size", "64", "--test-size", "64", "--probe-steps", "10", "--recon-size", "32",
        "--recon-steps", "3", "--batch-size", "64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, flags in (("r1e", ["--modules", "3", "--context", "R1E"]), ("e2e", ["--modules", "1"]),
                        ("r14", ["--arch", "resnet14", "--modules", "2"])):
        assert main([*TRAIN, *flags, "--out", str(root / name)]) == 0
    return root


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_analyze_lines_up_runs_on_cuts_and_is_deterministic(runs, tmp_path, capsys):
    args = ["analyze", str(runs / "r1e"), str(runs / "e2e" / "checkpoint.pt"), *FAST]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "R1E K=3" in out and "E2E" in out and "hc = h" in out
    rows = read(tmp_path / "a" / "analysis.csv")
    # Default boundaries: the K=3 run's two cuts, probed on both runs; h and hc each.
    assert len(rows) == 2 * 2 * 2 and {r["run"] for r in rows} == {"R1E K=3", "E2E"}
    assert len({r["unit"] for r in rows}) == 2
    e2e = {(r["unit"], r["feature"]): r for r in rows if r["run"] == "E2E"}
    for unit in {r["unit"] for r in rows}:
        h, hc = e2e[unit, "h"], e2e[unit, "hc"]
        assert h["supplied"] == "False" and h["probe_acc"] == hc["probe_acc"] and h["recon_psnr"] == hc["recon_psnr"]
    assert all(r["supplied"] == "True" for r in rows if r["run"] == "R1E K=3")
    assert all(0 <= float(r["probe_acc"]) <= 100 and float(r["recon_psnr"]) > 0 for r in rows)
    assert (tmp_path / "a" / "analysis.png").stat().st_size > 10_000
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "analysis.csv").read_bytes() == (tmp_path / "b" / "analysis.csv").read_bytes()


def test_analyze_units_labels_and_mlp(runs, tmp_path, capsys):
    assert main(["analyze", str(runs / "e2e"), *FAST, "--units", "0.0,2.0", "--labels", "mine", "--mlp",
                 "--no-recon", "--out", str(tmp_path)]) == 0
    rows = read(tmp_path / "analysis.csv")
    assert [(r["run"], r["name"], r["feature"]) for r in rows] == [
        ("mine", "0.0", "h"), ("mine", "0.0", "hc"), ("mine", "2.0", "h"), ("mine", "2.0", "hc")]
    assert all(r["mlp_acc"] and not r["recon_psnr"] for r in rows)
    assert "mlp%" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--labels", "a,b"], "2 names for 1 runs"),
    (["--units", "2,1"], "strictly increasing"),
    (["--train-size", "100000"], "the training split has"),
    (["--pool", "-1"], "--pool must be >= 0"),
    (["--probe-wd", "nan"], "--probe-wd a finite number >= 0"),
    (["--seed", "-1"], "seed must be"),
    (["--units", "1,5"], "out of range"),
    (["RUN14"], "different units"),
    (["MISSING"], "no checkpoint"),
])
def test_analyze_bad_input_one_line_exit_2(runs, tmp_path, capsys, extra, message):
    more = {"RUN14": str(runs / "r14"), "MISSING": str(tmp_path / "none")}
    run_args = [str(runs / "e2e"), *(more[e] for e in extra if e in more)]
    flags = [e for e in extra if e not in more]
    assert main(["analyze", *run_args, *FAST, *flags, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_analyze_a_vit_run(tmp_path):
    """Token features: probes on the mean token, the decoder on the grid of patch tokens, at the run's cuts."""
    flags = ["--arch", "vit-mini-p8", "--modules", "3", "--context", "R1E", "--head", "meantoken",
             "--optimizer", "adamw", "--lr", "0.001", "--warmup-start-lr", "1e-5"]
    assert main([*TRAIN, *flags, "--out", str(tmp_path / "vit")]) == 0
    assert main(["analyze", str(tmp_path / "vit"), *FAST, "--out", str(tmp_path / "an")]) == 0
    rows = read(tmp_path / "an" / "analysis.csv")
    assert {r["feature"] for r in rows} == {"h", "hc"} and len(rows) == 4
    assert all(int(r["dims"]) == 64 and float(r["recon_psnr"]) > 0 for r in rows)  # D = 64 after the token mean
