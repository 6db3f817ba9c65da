import json

from tests.reproduce.tiny import TINY

from contsup.cli import main


def test_list_names_every_preset(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("table1", "table2", "table3", "table4", "memory_balanced", "ablation"):
        assert name in out


def test_dry_run_builds_without_training(capsys, tmp_path):
    out = tmp_path / "sweep"
    assert main(["reproduce", "table1", "--recipe", "cpu", "--out", str(out), "--dry-run",
                 "--only", "context=E2E,R1E"]) == 0
    text = capsys.readouterr().out
    assert "resnet32-fashion-mnist-K16-R1E-n5000-s0" in text and "resnet32-fashion-mnist-K1-E2E" in text
    assert "R0" not in text.split("folder")[1]
    assert not out.exists()


def test_sweep_then_collect(capsys, tmp_path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY)
    out = tmp_path / "sweep"
    args = ["reproduce", str(preset), "--out", str(out), "--in-process", "--only", "context=R1E"]
    assert main(args) == 0
    assert "trained 1" in capsys.readouterr().out
    assert main([*args, "--collect"]) == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.index("{"):text.index("}") + 1])
    assert result["runs"] == 1 and (out / "results" / "tiny-cpu.csv").is_file()
    assert main(args) == 0
    assert "done earlier 1, trained 0" in capsys.readouterr().out


def test_user_errors_exit_2(capsys, tmp_path):
    assert main(["reproduce", "table99"]) == 2
    assert main(["reproduce", "table1", "--recipe", "gpu", "--dry-run"]) == 2
    assert main(["reproduce", "table1", "--only", "context=R7", "--dry-run"]) == 2
    assert main(["reproduce"]) == 2
    err = capsys.readouterr().err
    assert err.count("contsup: error:") == 4
