"""Why a short run of a bottleneck ResNet can predict one class at test time (issue 32, item 7).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bn_collapse.py [--images 512] [--epochs 2] [--batch 64]

Trains a small bottleneck ResNet (1x1-3x3-1x1 blocks, BatchNorm, expansion 4) on a Fashion-MNIST subset,
end-to-end (K = 1) and cut into K = 4 modules (R1E and E), then evaluates each network on the test set twice:
with BatchNorm's running statistics (what `evaluate` and `contsup eval` use) and with each test batch's own
statistics (BatchNorm in training mode, on a copy). When the first collapses to one class and the second
does not, the running statistics are the cause, not the weights.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import contsup
from contsup.data import DeviceLoader, load_dataset
from contsup.data.split import seeded_subset


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), BatchNorm after each, a projected shortcut where shapes change."""

    def __init__(self, cin: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def backbone() -> contsup.Backbone:
    """Stem, then 3 stages of 2 bottleneck blocks (16, 32, 64 wide inside), pooled linear classifier."""
    stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
    units, cin = [stem], 32
    for mid, stride in ((16, 1), (32, 2), (64, 2)):
        units += [Bottleneck(cin, mid, stride), Bottleneck(4 * mid, mid)]
        cin = 4 * mid
    return contsup.Backbone(units, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)))


@torch.no_grad()
def errors(net: nn.Module, loader: DeviceLoader, batch_stats: bool) -> tuple[float, float]:
    """(test error %, share of the most predicted class %), BatchNorm on running or on each batch's statistics."""
    net = copy.deepcopy(net)
    net.eval()
    if batch_stats:
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
    preds, wrong, total = torch.zeros(10), 0, 0
    for x, y in loader:
        p = net(x).argmax(1)
        preds += torch.bincount(p, minlength=10)[:10].float()
        wrong += int((p != y).sum())
        total += y.numel()
    return 100 * wrong / total, 100 * float(preds.max() / preds.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--test", type=int, default=2000, help="seeded test images")
    args = p.parse_args()
    data = load_dataset("fashion-mnist", train_subset=args.images)
    test = DeviceLoader(seeded_subset(data.test, args.test, 0), data.info, 500, "cpu")
    sample = torch.zeros(1, 1, 28, 28)
    print(f"{args.images} images x {args.epochs} epochs, batch {args.batch}, lr {args.lr}, {args.test} test images")
    for modules, context in ((1, "R1E"), (4, "R1E"), (4, "E")):
        torch.manual_seed(0)
        net = contsup.LocalNetwork(backbone(), contsup.LocalConfig(modules=modules, context=context), sample)
        cfg = contsup.TrainConfig(epochs=args.epochs, lr=args.lr, device="cpu", progress=False, step_peak=False)
        train = DeviceLoader(data.train, data.info, args.batch, "cpu", train=True)
        trainer = contsup.Trainer(contsup.LocalStep.of(net, cfg), contsup.Loaders(train, test), cfg)
        trainer.fit()
        running, share = errors(net, test, batch_stats=False)
        batch, batch_share = errors(net, test, batch_stats=True)
        name = "E2E" if modules == 1 else f"K={modules} {context}"
        print(f"{name:9s} train error (last epoch) {trainer.history[-1]['train_error']:5.2f} %   "
              f"test error, running statistics: {running:5.2f} % ({share:3.0f} % one class)   "
              f"batch statistics: {batch:5.2f} % ({batch_share:3.0f} % one class)", flush=True)


if __name__ == "__main__":
    main()
