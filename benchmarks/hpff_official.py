"""HPFF as released, parameter by parameter: contsup's cascade against the authors' classes (Zeudfish/HPFF).

The official model calls `.cuda()` while it builds; this script makes that a no-op during the build, on
CPU. Point it at the folder that holds the official `network/` package (from a clone of Zeudfish/HPFF):

    PYTHONPATH=src python benchmarks/hpff_official.py "HPFF/Exp on CIFAR_SVHN_STL"

It builds the README's ResNet-32 run (`--local_module_num 16`: 15 modules, train.py's default `2c2f` heads,
cross entropy, feature dimension 128, wx = 0.001, wy = 0.999) and contsup's on the same partition
(`--modules 15 --cuts 1,...,14 --head 2c2f --recon 5,0.5,0,0 --recon-schedule hpff --recon-patches 2
--cascade 0.999`), and prints per module the parameters its forward trains (module i = 1 .. 13:
`net_classifier`, `aux_classifier` and `aux_decoder` of its table entry) beside contsup's objective's, then
the backbones' and what the official class builds but never uses.
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


def official(folder: str) -> tuple[list[int], int, int]:
    """(per module: the heads its forward trains, the backbone's, every parameter the class holds)."""
    sys.path.insert(0, folder)
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self), \
            mock.patch.object(nn.Module, "cuda", lambda self, *a, **k: self):
        hpff = importlib.import_module("network.resnetInfoPro_HPFF")
        model = hpff.resnet32(local_module_num=16, batch_size=4, image_size=32, dataset="cifar10", class_num=10,
                              aux_net_config="2c2f", local_loss_mode="cross_entropy", aux_net_widen=1,
                              aux_net_feature_dim=128)
    modules = [0]  # module 0 has no head: module 1's second path trains it
    for i in range(1, len(model.Encoder_Net) - 1):
        stage, layer = model.infopro_config[i]
        modules.append(sum(count(getattr(model, f"{name}_{stage}_{layer}"))
                           for name in ("net_classifier", "aux_classifier", "aux_decoder")))
    backbone = sum(count(m) for m in (model.conv1, model.bn1, model.layer1, model.layer2, model.layer3, model.fc64))
    return modules, backbone, count(model)


def ours() -> tuple[list[int], int]:
    """The same counts for contsup's cascade on the official partition."""
    config = LocalConfig(modules=15, context="R0", cuts=",".join(str(u) for u in range(1, 15)), head="2c2f",
                         recon="5,0.5,0,0", recon_schedule="hpff", recon_patches=2, cascade=0.999)
    net = LocalNetwork(build_arch("resnet32", 3, 10), config, torch.zeros(1, 3, 32, 32))
    return [count(o) for o in net.objectives[:-1]], count(net.blocks) + count(net.classifier)


def main() -> None:
    """Print both models' counts side by side."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="the folder holding the official network/ package")
    args = p.parse_args()
    theirs, their_backbone, built = official(args.folder)
    mine, my_backbone = ours()
    print("module  official  contsup  difference")
    for k, (a, b) in enumerate(zip(theirs, mine, strict=True)):
        print(f"{k:6d}  {a:8,d}  {b:7,d}  {b - a:+d}")
    print(f"backbone  {their_backbone:,}  {my_backbone:,}  {my_backbone - their_backbone:+d}")
    print(f"trained   {sum(theirs) + their_backbone:,}  {sum(mine) + my_backbone:,}")
    print(f"the official class holds {built:,} (heads at positions its forward never reads, every net_decoder, fc)")


if __name__ == "__main__":
    main()
