"""MAN as published, parameter by parameter: contsup's model against the authors' classes (JunhaoSu0/MAN).

The official model calls `.cuda()` while it builds; this script makes that a no-op during the build, on
CPU. Point it at the folder that holds the official `networks/` package (from a clone of JunhaoSu0/MAN):

    PYTHONPATH=src python benchmarks/man_official.py "MAN/Exp on CIFAR-SVHN-STL"

It builds the README's ResNet-32 run (`--local_module_num 16`: 15 modules, `2c2f` heads, cross entropy,
feature dimension 128, m = 0.995) and contsup's on the same partition (`--modules 15 --cuts 1,...,14
--head 2c2f --man-momentum 0.995 --recon 5,0.5,0,0 --recon-schedule stage`), and prints per cut the official
LB + EMA + decoder + classifier parameters beside contsup's objective's, then the backbones'.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from unittest import mock

import torch
from torch import nn

from contsup.config import LocalConfig
from contsup.method import LocalNetwork
from contsup.models import build_arch


def count(module: nn.Module) -> int:
    """Parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def official(folder: str) -> tuple[list[int], int]:
    """(per cut: LB + EMA + decoder + classifier parameters, the backbone's) of the official ResNet-32 K = 16."""
    sys.path.insert(0, folder)
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self), \
            mock.patch.object(nn.Module, "cuda", lambda self, *a, **k: self):
        man = importlib.import_module("networks.resnetInfoPro_MAN")
        model = man.resnet32(local_module_num=16, batch_size=4, image_size=32, dataset="cifar10", class_num=10,
                             aux_net_config="2c2f", local_loss_mode="cross_entropy", aux_net_widen=1,
                             aux_net_feature_dim=128, momentum=0.995)
    cuts = []
    for i, (stage, layer) in enumerate(model.infopro_config[:-1]):
        lo, la = (stage + 1, 0) if layer == len(model.layer1) - 1 else (stage, layer + 1)  # the next unit
        parts = [model.LB[i], model.EMA_Net[i], getattr(model, f"decoder_{lo}_{la}"),
                 getattr(model, f"aux_classifier_{lo}_{la}")]
        cuts.append(sum(count(m) for m in parts))
    backbone = sum(count(m) for m in (model.conv1, model.bn1, model.layer1, model.layer2, model.layer3, model.fc64))
    return cuts, backbone


def ours() -> tuple[list[int], int]:
    """The same counts for contsup's MAN as published on the official partition."""
    config = LocalConfig(modules=15, context="R0", cuts=",".join(str(u) for u in range(1, 15)), head="2c2f",
                         man_momentum=0.995, recon="5,0.5,0,0", recon_schedule="stage")
    net = LocalNetwork(build_arch("resnet32", 3, 10), config, torch.zeros(1, 3, 32, 32))
    return [count(o) for o in net.objectives[:-1]], count(net.blocks) + count(net.classifier)


def main() -> None:
    """Print both models' counts side by side."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="the folder holding the official networks/ package")
    args = p.parse_args()
    theirs, their_backbone = official(args.folder)
    mine, my_backbone = ours()
    print("cut  official  contsup  difference")
    for k, (a, b) in enumerate(zip(theirs, mine, strict=True)):
        print(f"{k:3d}  {a:8,d}  {b:7,d}  {b - a:+d}")
    print(f"backbone  {their_backbone:,}  {my_backbone:,}  {my_backbone - their_backbone:+d}")
    print(f"all       {sum(theirs) + their_backbone:,}  {sum(mine) + my_backbone:,}")


if __name__ == "__main__":
    main()
