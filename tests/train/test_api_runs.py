"""The Python API's Trainer keeps the command line's promises about run folders."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from contsup.cli import main
from contsup.config import LocalConfig, TrainConfig
from contsup.data import DeviceLoader, load_dataset
from contsup.errors import ContsupError
from contsup.method.network import LocalNetwork
from contsup.models import Backbone, build_arch
from contsup.train import Loaders, LocalStep, Trainer
from contsup.train.peak import step_peak


def api_trainer(out, batch=32, epochs=1):
    """A K = 3 R1E ResNet-8 on the default synthetic data (what `contsup eval` loads again), TrainConfig's batch
    size left at its default (128), the loader's at `batch`."""
    data = load_dataset("synthetic", train_subset=64)
    torch.manual_seed(0)
    config = LocalConfig(modules=3, context="R1E")
    net = LocalNetwork(build_arch("resnet8", 3, 10, 32), config, torch.zeros(1, 3, 32, 32))
    cfg = TrainConfig(epochs=epochs, lr=0.05, warmup_epochs=0, device="cpu", progress=False)
    train = DeviceLoader(data.train, data.info, batch, "cpu", train=True)
    return Trainer(LocalStep.of(net, cfg), Loaders(train, DeviceLoader(data.test, data.info, 128, "cpu")), cfg, out)


def test_a_folder_that_holds_a_run_is_refused_and_left_unchanged(tmp_path):
    api_trainer(tmp_path).fit()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ContsupError, match=r"already holds a run .*Trainer\.resume"):
        api_trainer(tmp_path).fit()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert ".lock" not in before  # the lock lives only while fit runs


def test_resume_through_the_api_continues_the_run(tmp_path):
    api_trainer(tmp_path, epochs=2).fit(until=1)
    trainer = api_trainer(tmp_path, epochs=2)
    trainer.resume(tmp_path / "checkpoint.pt")
    assert trainer.fit()["epochs"] == 2
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_the_batch_size_is_the_loaders(tmp_path):
    trainer = api_trainer(tmp_path, batch=32)
    summary = trainer.fit()
    assert trainer.config.batch_size == 32 and trainer.record["run"]["train"]["batch_size"] == 32
    assert summary["step_peak_memory_bytes"] == step_peak(trainer.net, 32, torch.device("cpu")).peak_bytes


def test_eval_and_runs_read_an_api_run(tmp_path, capsys):
    summary = api_trainer(tmp_path / "run").fit()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--device", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("resnet8 K=3 R1E on synthetic") and f"{summary['final_test_error']:.2f}%" in first
    assert main(["runs", str(tmp_path)]) == 0
    assert "R1E K=3" in capsys.readouterr().out


def test_eval_refuses_a_network_of_ones_own_in_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 2, (32,))
    units = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))]
    net = LocalNetwork(Backbone.from_units(units, 2, x[:1]), LocalConfig(modules=2, context="R1E", head="0c2f"), x[:1])
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    cfg = TrainConfig(epochs=1, lr=0.05, warmup_epochs=0, device="cpu", progress=False)
    Trainer(LocalStep.of(net, cfg), Loaders(loader, loader), cfg, tmp_path / "own").fit()
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "own")]) == 0
    assert "R1E K=2" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "own"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "network or dataset of its own" in err and len(err.splitlines()) == 1


def test_reconstruction_through_the_api(tmp_path):
    """recon = "paper" builds from LocalConfig (with recon_dataset); without the images' pixels its step is
    refused in one line, and with the loader's denormalisation it trains."""
    data = load_dataset("synthetic", train_subset=64)
    cfg = TrainConfig(epochs=1, lr=0.05, warmup_epochs=0, device="cpu", progress=False)
    local = LocalConfig(modules=2, recon="paper", recon_dataset="cifar10")
    net = LocalNetwork(build_arch("resnet32", 3, 10, 32), local, torch.zeros(1, 3, 32, 32))
    assert net.plan.recon is not None and net.needs_pixels
    with pytest.raises(ContsupError, match="pixels"):
        LocalStep.of(net, cfg)
    train = DeviceLoader(data.train, data.info, 32, "cpu", train=True)
    loaders = Loaders(train, DeviceLoader(data.test, data.info, 128, "cpu"))
    summary = Trainer(LocalStep.of(net, cfg, train.denormalize), loaders, cfg, tmp_path).fit()
    assert summary["epochs"] == 1 and summary["params"]["decoders"] > 0


def small_api(out=None, loader_batch=16, images=32, classes=2, **train):
    """A K = 2 network of two conv units on random 3 x 8 x 8 images, a Trainer over it with `train` settings."""
    torch.manual_seed(0)
    x, y = torch.randn(images, 3, 8, 8), torch.randint(0, classes, (images,))
    units = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))]
    net = LocalNetwork(Backbone.from_units(units, 2, x[:1]), LocalConfig(modules=2, context="R1E", head="0c2f"), x[:1])
    loader = DataLoader(TensorDataset(x, y), batch_size=loader_batch, drop_last=True)
    cfg = TrainConfig(**{"epochs": 1, "lr": 0.05, "warmup_epochs": 0, "device": "cpu", "progress": False, **train})
    return Trainer(LocalStep.of(net, cfg), Loaders(loader, loader), cfg, out)


@pytest.mark.parametrize("settings,message", [
    ({"momentum": 1.5}, "momentum"),
    ({"epochs": 0}, "epochs must be"),
    ({"lr": -1.0}, "lr must be"),
    ({"warmup_epochs": None, "warmup_steps": 10**9}, "warmup_steps must be at most"),
    ({"loader_batch": 64}, "steps per epoch"),  # a loader without one full batch
    ({"eval_subset": 4}, r"eval_subset \(the last epoch is the only one evaluated"),  # 1 epoch: never used
])
def test_the_api_refuses_what_the_command_line_refuses(settings, message, tmp_path):
    with pytest.raises(ContsupError, match=message):
        small_api(tmp_path / "run", **settings)
    assert not (tmp_path / "run").exists()


def test_resume_of_another_networks_checkpoint_is_one_line(tmp_path):
    api_trainer(tmp_path / "k3").fit()
    with pytest.raises(ContsupError, match="do not fit this Trainer's network"):
        small_api(tmp_path / "other").resume(tmp_path / "k3" / "checkpoint.pt")


def test_evaluate_refuses_labels_outside_the_classes():
    from contsup.train import evaluate

    trainer = small_api()
    x, y = torch.randn(8, 3, 8, 8), torch.tensor([0, 1, 0, 1, 7, 0, -1, 1])
    with pytest.raises(ContsupError, match="2 of 8 evaluated labels lie outside"):
        evaluate(trainer.net, [(x, y)])
    assert evaluate(trainer.net, [(x, y.clamp(0, 1))])["images"] == 8


@pytest.mark.parametrize("sample", [torch.zeros(1, 1, 8, 8), torch.zeros(8), torch.zeros(1, 3, 0, 8),
                                    torch.zeros(1, 3, 8, 8, dtype=torch.int64)])
def test_a_sample_the_backbone_cannot_take_is_one_line(sample):
    units = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))]
    backbone = Backbone.from_units(units, 2, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ContsupError, match="sample"):
        LocalNetwork(backbone, LocalConfig(modules=2, head="0c2f"), sample)


def test_two_trainers_on_one_folder_in_two_threads(tmp_path):
    """One writer per run folder, also between threads of one process: the second Trainer is refused."""
    import threading

    from contsup.train.runfolder import hold_run_folder

    held, release = threading.Event(), threading.Event()

    def first() -> None:
        with hold_run_folder(tmp_path / "run", reentrant=True):  # what Trainer.fit holds while it trains
            held.set()
            release.wait(30)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert held.wait(30)
        with pytest.raises(ContsupError, match="being written by another"):
            small_api(tmp_path / "run").fit()
    finally:
        release.set()
        thread.join()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_warm_up_above_the_peak_is_refused_in_one_line(tmp_path, capsys):
    """docs/vit.md's AdamW rate 1e-3 with the default warm-up start (0.01): refused, with the fix; no warm-up: fine."""
    with pytest.raises(ContsupError, match=r"start at 0.01, 10x the peak rate lr 0.001; pass --warmup-start-lr"):
        small_api(lr=1e-3, warmup_epochs=0.5)
    small_api(lr=1e-3, warmup_epochs=0)  # no warm-up: its start is never used
    small_api(lr=1e-3, warmup_epochs=0.5, warmup_start_lr=1e-5)


def test_evaluate_counts_the_most_predicted_class():
    from contsup.train import evaluate

    net = small_api().net
    with torch.no_grad():  # every image: class 1 of 2
        [m for m in net.objectives[-1].modules() if isinstance(m, nn.Linear)][-1].bias.copy_(torch.tensor([0.0, 1e4]))
    x, y = torch.randn(8, 3, 8, 8), torch.tensor([0, 1, 0, 1, 0, 1, 0, 0])
    result = evaluate(net, [(x, y)])
    assert result["top_class_share"] == 1.0 and result["error"] == 62.5


def test_a_cut_rule_given_as_cuts_names_the_setting_that_takes_it():
    """The command line's --cuts balanced sets cut_table; LocalConfig(cuts="balanced") says so in one line."""
    units = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))]
    backbone = Backbone.from_units(units, 2, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ContsupError, match=r"cut_table takes: LocalConfig\(cut_table='balanced'\)"):
        LocalNetwork(backbone, LocalConfig(modules=2, head="0c2f", cuts=" balanced"), torch.zeros(1, 3, 8, 8))


def test_a_training_loader_without_a_length_needs_its_steps():
    """An epoch of a loader without `len` (a generator) is refused in one line unless its steps are given."""
    batches = [(torch.randn(16, 3, 8, 8), torch.randint(0, 2, (16,)))] * 2
    with pytest.raises(ContsupError, match="no length: give Loaders\\(steps_per_epoch"):
        Loaders(iter(batches), batches)
    assert Loaders(iter(batches), batches, steps_per_epoch=2).steps_per_epoch == 2
    assert Loaders(batches, batches).steps_per_epoch == 2
