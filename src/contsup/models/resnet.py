"""CIFAR-style ResNet-(6n+2) (He et al. 2016) as a chain of units: stem, then BasicBlocks."""

from __future__ import annotations

import re

import torch
from torch import nn

from contsup.errors import ContsupError
from contsup.models.chain import Backbone, Classifier


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 conv + BN projection on shape change)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def stem(in_ch: int, out_ch: int = 16) -> nn.Sequential:
    """conv3x3 (no bias) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolutions, BN weight 1 and bias 0, as in the spec."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet(depth: int, in_channels: int = 3, num_classes: int = 10) -> Backbone:
    """ResNet-`depth` (depth = 6n + 2) for small images, as a chain of 3n + 1 units."""
    if depth < 8 or (depth - 2) % 6:
        raise ContsupError(f"ResNet depth must be 6n+2 with n >= 1 (20, 32, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    units: list[nn.Module] = [stem(in_channels)]
    names: list[tuple[int, int]] = [(0, 0)]
    in_ch = 16
    for stage, (ch, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        for block in range(n):
            units.append(BasicBlock(in_ch, ch, stride if block == 0 else 1))
            names.append((stage, block))
            in_ch = ch
    backbone = Backbone(units, Classifier(64, num_classes), unit_names=names, name=f"resnet{depth}")
    init_weights(backbone)
    return backbone


ARCH_PATTERN = re.compile(r"resnet(\d+)")


def build_arch(name: str, in_channels: int, num_classes: int) -> Backbone:
    """Build a backbone by name: `resnetN` for any N = 6n + 2."""
    match = ARCH_PATTERN.fullmatch(name.lower())
    if not match:
        raise ContsupError(f"unknown architecture {name!r}: use resnetN with N = 6n+2, e.g. resnet32")
    return resnet(int(match.group(1)), in_channels, num_classes)
