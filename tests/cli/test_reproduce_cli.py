import json

from tests.reproduce.tiny import TINY

from contsup.cli import main


def test_list_names_every_preset(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("table1", "table2", "table3", "table4", "memory_balanced", "ablation"):
        assert name in out


def test_readme_list_comment_names_every_preset():
    from pathlib import Path

    from contsup.reproduce.presets import available_presets

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    comment = next(line for line in readme.splitlines() if line.startswith("contsup reproduce --list"))
    assert comment.split("#")[1].split() == available_presets()


def test_paper_dry_run_shows_the_recipe_and_the_missing_dataset(capsys, tmp_path):
    assert main(["reproduce", "table1", "--recipe", "paper", "--dry-run", "--device", "cpu",
                 "--data-dir", str(tmp_path), "--only", "context=E2E", "--out", str(tmp_path / "sweep")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("recipe paper: dataset = cifar10, epochs = 160, batch_size = 1024, lr = 0.8")
    assert lines[2] == "device: cpu -> cpu"
    assert lines[3].startswith(f"data: cifar10: MISSING (looked in {tmp_path}); a run downloads it")
    assert not (tmp_path / "sweep").exists()


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
