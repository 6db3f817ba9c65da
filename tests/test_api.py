"""The Python API with a user's own chain of units and a plain torch DataLoader."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import contsup


def test_user_model_and_dataloader(tmp_path):
    torch.manual_seed(0)
    y = torch.randint(0, 2, (160,))
    x = torch.randn(160, 3, 12, 12) + (2.0 * y - 1)[:, None, None, None]
    loader = DataLoader(TensorDataset(x[:96], y[:96]), batch_size=32, shuffle=True)
    held_out = DataLoader(TensorDataset(x[96:], y[96:]), batch_size=64)  # images the network never trained on
    units = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
    )
    backbone = contsup.Backbone.from_units(units, num_classes=2, sample=x[:1])
    net = contsup.LocalNetwork(backbone, contsup.LocalConfig(modules=3, context="R1E", head="0c2f"), x[:1])
    cfg = contsup.TrainConfig(epochs=3, batch_size=32, lr=0.05, warmup_epochs=0, device="cpu", progress=False)
    summary = contsup.Trainer(contsup.LocalStep.of(net, cfg), contsup.Loaders(loader, held_out), cfg, tmp_path).fit()
    assert summary["epochs"] == 3 and (tmp_path / "checkpoint.pt").exists()
    assert summary["final_test_error"] < 50 and summary["final_test_images"] == 64
    assert summary["final_test_error"] == contsup.evaluate(net, held_out)["error"]
