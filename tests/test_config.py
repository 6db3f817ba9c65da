import pytest

from contsup.cli import main
from contsup.cli.train import read_config_file
from contsup.config import RunConfig, nest, resolve, settings, to_toml
from contsup.errors import ContsupError
from contsup.reproduce.presets import defaults


def test_every_setting_has_help_and_a_unique_key():
    table = settings()
    assert all(s.help for s in table.values()), [s.path for s in table.values() if not s.help]
    assert {"train.lr", "data.name", "local.modules", "pipeline.stage_sizes", "arch"} <= set(table)
    assert table["data.name"].key == "dataset" and table["local.modules"].default == RunConfig().local.modules
    assert defaults()["dataset"] == RunConfig().data.name


def test_names_dotted_or_by_key():
    assert nest({"train.lr": 0.1, "dataset": "svhn", "K": 3}) == {
        "train": {"lr": 0.1}, "data": {"name": "svhn"}, "local": {"modules": 3}}
    with pytest.raises(ContsupError, match="unknown setting 'lrr'"):
        nest({"lrr": 1})


def test_from_dict_checks_and_fills():
    cfg = RunConfig.from_dict({"train": {"lr": 0.3}, "local": {"recon": {"ixx_1": 1, "ixy_1": 0, "ixx_2": 0,
                                                                         "ixy_2": 1}}})
    assert cfg.train.lr == 0.3 and cfg.train.epochs == RunConfig().train.epochs and cfg.local.recon.ixx_1 == 1
    with pytest.raises(ContsupError, match="unknown setting"):
        RunConfig.from_dict({"train": {"learning_rate": 0.3}})
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()


@pytest.mark.quick
def test_toml_round_trip(tmp_path):
    cfg = resolve({"arch": "resnet20", "local": {"cuts": "1.2,2.1", "recon": "5,1,0,1"},
                   "pipeline": {"stage_sizes": "1,3"}, "out": "x"})
    assert cfg.local.cuts == [(1, 2), (2, 1)] and cfg.pipeline.stage_sizes == [1, 3]
    (tmp_path / "run.toml").write_text(to_toml(cfg))
    assert resolve(read_config_file(str(tmp_path / "run.toml"))) == cfg


def test_flags_override_the_file(tmp_path, capsys):
    (tmp_path / "run.toml").write_text('arch = "resnet20"\n[train]\nlr = 0.3\nepochs = 7\n')
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--lr", "0.05", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert 'arch = "resnet20"' in text and "lr = 0.05" in text and "epochs = 7" in text
    (tmp_path / "bad.toml").write_text("[train]\nlrr = 1\n")
    assert main(["train", "--config", str(tmp_path / "bad.toml"), "--print-config"]) == 2
    assert "unknown setting" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "training epochs (the paper's recipe) (default: 160)" in text and "train settings (train.*)" in text
    assert "--data-dir" in text and "--no-progress" in text
