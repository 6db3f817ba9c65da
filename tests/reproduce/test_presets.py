import pytest
import torch

from contsup.checks import check_local
from contsup.data import dataset_info
from contsup.errors import ContsupError
from contsup.method.recon import ReconWeights, parse_recon
from contsup.reproduce.presets import available_presets, expand, jobs, load_preset, parse_only, run_name
from contsup.run import build_network

PAPER_EXPERIMENTS = {"table1", "table2", "table3", "table4", "memory_balanced", "ablation", "protocol"}


@pytest.mark.quick
def test_every_paper_experiment_is_shipped():
    assert PAPER_EXPERIMENTS <= set(available_presets())


@pytest.mark.parametrize("name", sorted(PAPER_EXPERIMENTS))
@pytest.mark.parametrize("recipe", ["cpu", "paper"])
def test_presets_expand_to_valid_configs(name, recipe, tmp_path):
    todo = jobs(load_preset(name), recipe, tmp_path)
    assert todo
    names = [j.name for j in todo]
    assert len(set(names)) == len(names)
    for job in todo:
        assert job.config.out == str(tmp_path / job.name)
        check_local(job.config.local)  # bad context / head / loss / cut table would raise
        if recipe == "cpu":
            assert job.config.data.name == "fashion-mnist" and job.config.train.epochs <= 3
        else:
            assert job.config.train.epochs == 160 and job.config.data.name in ("cifar10", "svhn", "stl10")


# The paper's reconstruction weights [ixx_1, ixy_1, ixx_2, ixy_2], typed from the specification's table (not
# read from the code's RECON_PRESETS, which these tests check).
SPEC_RECON = {
    ("resnet32", "cifar10"): {2: (5, 1, 0, 0), 4: (6, 0, 1, 2), 8: (5, 0, 0, 2), 16: (5, 0.05, 0.2, 0.5)},
    ("resnet110", "cifar10"): {2: (5, 0.5, 0, 0), 4: (1, 0, 0, 1), 8: (5, 0, 0, 1), 16: (5, 0, 0.5, 1)},
    ("resnet110", "stl10"): {2: (10, 1, 0, 0), 4: (20, 0.2, 5, 2), 8: (20, 0.2, 5, 1), 16: (20, 0.5, 10, 0.1)},
    ("resnet110", "svhn"): {2: (1, 0.1, 0, 0), 4: (5, 0, 0.5, 0), 8: (5, 0, 0.5, 2), 16: (5, 0.2, 0.5, 1)},
}
SPEC_RECON_BALANCED = {2: (5, 0.1, 0, 0), 3: (5, 0, 5, 0.1), 4: (5, 0, 0, 0.1)}  # ResNet-32 and -110, CIFAR-10


def test_paper_reconstruction_weights_are_the_specifications():
    for (arch, data), by_k in SPEC_RECON.items():
        for k, want in by_k.items():
            assert parse_recon("paper", arch, data, k, False) == ReconWeights(*want), (arch, data, k)
    for arch in ("resnet32", "resnet110"):
        for k, want in SPEC_RECON_BALANCED.items():
            assert parse_recon("paper", arch, "cifar10", k, True) == ReconWeights(*want), (arch, k)
    assert parse_recon("paper", "resnet32", "cifar10", 8, True) == ReconWeights(5, 0, 0, 2)


def resolved_recon(cfg):
    """The reconstruction weights the run's network resolves (built on the meta device: shapes only)."""
    info = dataset_info(cfg.data.name)
    with torch.device("meta"):
        return build_network(cfg, info.channels, info.num_classes, info.size).plan.recon


def test_paper_recipes_follow_the_spec(tmp_path):
    table3 = {j.config.data.name: j.config for j in jobs(load_preset("table3"), "paper", tmp_path)}
    assert (table3["stl10"].train.batch_size, table3["stl10"].train.lr) == (128, 0.1)
    assert (table3["svhn"].train.batch_size, table3["svhn"].train.lr) == (1024, 0.8)
    for job in jobs(load_preset("table3"), "paper", tmp_path):
        if job.settings["context"] != "E2E":
            data, k = job.config.data.name, job.config.local.modules
            assert resolved_recon(job.config) == ReconWeights(*SPEC_RECON["resnet110", data][k])


def test_table1_cpu_networks_build(tmp_path):
    todo = jobs(load_preset("table1"), "cpu", tmp_path)
    assert [j.settings["context"] for j in todo] == ["E2E", "R0", "E", "R1", "R1E"]
    info = dataset_info("fashion-mnist")
    for job in todo:
        net = build_network(job.config, info.channels, info.num_classes, info.size)
        assert net.num_modules == job.config.local.modules
        assert (net.param_counts()["context"] > 0) == (job.settings["context"] not in ("E2E", "R0"))


def test_cpu_twin_of_table3_uses_cifar10_recon_weights(tmp_path):
    for job in jobs(load_preset("table3"), "cpu", tmp_path):
        if job.settings["context"] != "E2E":
            k = job.config.local.modules
            assert resolved_recon(job.config) == ReconWeights(*SPEC_RECON["resnet110", "cifar10"][k])


def test_e2e_is_one_configuration_and_only_filters():
    preset = load_preset("table2")
    settings = expand(preset, "cpu")
    e2e = [s for s in settings if s["context"] == "E2E"]
    assert len(e2e) == 1 and e2e[0]["modules"] == 1 and e2e[0]["loss"] == "softmax"
    picked = expand(preset, "cpu", seeds=[1, 2], only=parse_only(["context=R1E", "modules=2,16"]))
    assert {(s["modules"], s["loss"], s["seed"]) for s in picked} == {
        (k, loss, seed) for k in (2, 16) for loss in ("softmax", "contrast") for seed in (1, 2)}
    assert len({run_name(s) for s in picked}) == len(picked)


def test_explicit_cuts_name_their_run_folders(tmp_path):
    preset = tmp_path / "cuts.toml"
    preset.write_text('[base]\narch = "resnet32"\nmodules = 3\n[[grid]]\ncuts = ["1.4, 2.0", "3,7"]\n'
                      '[recipe.cpu]\nepochs = 1\n')
    todo = jobs(load_preset(preset), "cpu", tmp_path)
    assert [j.name for j in todo] == ["resnet32-fashion-mnist-K3-R1E-cuts1.4_2.0-s0",
                                    "resnet32-fashion-mnist-K3-R1E-cuts3_7-s0"]
    assert [j.config.local.cuts for j in todo] == ["1.4, 2.0", "3,7"]


def test_bad_presets_and_filters_raise(tmp_path):
    with pytest.raises(ContsupError, match="unknown preset"):
        load_preset("table99")
    bad = tmp_path / "bad.toml"
    bad.write_text('[base]\narch = "resnet32"\nbogus = 1\n[recipe.cpu]\nepochs = 1\n')
    with pytest.raises(ContsupError, match="bogus"):
        load_preset(bad)
    with pytest.raises(ContsupError, match="no recipe"):
        expand(load_preset("table1"), "gpu")
    with pytest.raises(ContsupError, match="KEY=VALUE"):
        parse_only(["context"])
    bad.write_text('[grid]\ncontext = ["R9"]\nmodules = [4]\n[recipe.cpu]\nepochs = 1\n')
    with pytest.raises(ContsupError, match="larger than the number of modules"):
        jobs(load_preset(bad), "cpu", tmp_path)
    bad.write_text('[grid]\nlr = [0.1, 0.2]\n[recipe.cpu]\nepochs = 1\n')
    with pytest.raises(ContsupError, match="differ only in lr"):
        expand(load_preset(bad), "cpu")


def test_unknown_top_level_table_raises(tmp_path):
    bad = tmp_path / "typo.toml"
    bad.write_text('[recipes.cpu]\nepochs = 1\n[recipe.cpu]\nepochs = 1\n')
    with pytest.raises(ContsupError, match="recipes"):
        load_preset(bad)


def test_rows_hold_no_setting_their_network_never_reads():
    """E2E rows drop the head, context and cut settings a recipe gives every row (K = 1 reads none: the paper
    recipe's local_init), recon_dataset is kept only beside recon = paper (memory_balanced's cpu recipe), and every
    row passes the run's check of settings that do nothing."""
    from contsup.checks import check_used
    from contsup.reproduce.presets import to_config

    rows = {(name, recipe): expand(load_preset(name), recipe) for name in ("memory_balanced", "protocol")
            for recipe in ("cpu", "paper")}
    for name, settings in rows.items():
        for s in settings:
            cfg = to_config(s)
            check_used(cfg.local, cfg.train)
            if s["context"] == "E2E":
                assert (s["local_init"], s["cut_table"], s["recon"]) == ("torch", "auto", None), (name, s)
            assert s["recon_dataset"] is None or s["recon"] == "paper", (name, s)
