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
    cfg = RunConfig.from_dict({"train": {"lr": 0.3}, "local": {"recon": "1,0,0,1"}})
    assert cfg.train.lr == 0.3 and cfg.train.epochs == RunConfig().train.epochs and cfg.local.recon == "1,0,0,1"
    with pytest.raises(ContsupError, match="unknown setting"):
        RunConfig.from_dict({"train": {"learning_rate": 0.3}})
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()


# A value of another type for each kind of field: a string for a boolean or a number, a fraction for a count,
# a non-finite number, a bool for a number, a choice outside a Literal, a list of the wrong items.
WRONG = {bool: ["false", "yes", 1, None], int: [1.5, "3", True, None], float: [float("nan"), float("inf"), "0.1", True],
         str: [3, True, ["a"]]}


def wrong_values(hint):
    import typing

    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return ["not-a-choice", 1]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, __import__("types").UnionType):
        if any(typing.get_origin(a) is list for a in args):
            return [[1.5], ["x"], "x" if str not in args else 2.5]
        if int in args and any(typing.get_origin(a) is typing.Literal for a in args):
            return [1.5, "other", True]
        return [v for v in WRONG[args[0]] if v is not None]
    return WRONG[hint]


@pytest.mark.parametrize("path", [p for p, s in settings().items()])
def test_every_setting_refuses_a_wrong_type(path):
    """The schema's one type check: every field refuses values of another type, naming the setting."""
    from contsup.config import nest as nest_settings

    hint = settings()[path].type
    for value in wrong_values(hint):
        if path in ("pipeline.stage_sizes", "pipeline.stage_units") and isinstance(value, str):
            continue  # the flag's text form "3,5,8" is parsed, and refused when it is not counts
        with pytest.raises(ContsupError, match=settings()[path].key):
            RunConfig.from_dict(nest_settings({path: value}))


def test_reviewed_wrong_types_refused():
    for bad in ({"local": {"lean_context": "false"}}, {"train": {"tensorboard": "yes"}},
                {"pipeline": {"replicas": 1.5}}, {"pipeline": {"timeout_s": float("nan")}}):
        with pytest.raises(ContsupError):
            RunConfig.from_dict(bad)


def test_schema_imports_nothing_from_the_method():
    """contsup.config is data: of the package it imports only contsup.errors (anywhere in the file)."""
    import ast
    from pathlib import Path

    import contsup.config

    tree = ast.parse(Path(contsup.config.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("contsup")} == {"contsup.errors"}


@pytest.mark.quick
def test_toml_round_trip(tmp_path):
    cfg = resolve({"arch": "resnet20", "local": {"cuts": "1.2,2.1", "recon": "5,1,0,1"},
                   "pipeline": {"stage_sizes": "1,3"}, "out": "x"})
    assert cfg.local.cuts == "1.2,2.1" and cfg.pipeline.stage_sizes == [1, 3]
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
