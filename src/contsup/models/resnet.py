"""ResNets (He et al. 2016) as chains of units (stem, then BasicBlocks), registered in `BACKBONES`.

CIFAR-style ResNet-(6n+2) (the paper's networks) and ImageNet-style ResNet-18/34; they take any image
size and ignore `image_size`.
"""

from __future__ import annotations

import torch
from torch import nn

from contsup.errors import ContsupError
from contsup.models.chain import BACKBONES, Backbone, Classifier


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

    def fresh(self, in_ch: int, out_ch: int, stride: int) -> BasicBlock:
        """A new block of this kind at other widths and stride (AugLocal's heads build theirs from the backbone's)."""
        return BasicBlock(in_ch, out_ch, stride)

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
    """Kaiming-normal (fan_out) convolutions, BN weight 1 and bias 0 (docs/method.md, networks)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet(depth: int, in_channels: int = 3, num_classes: int = 10) -> Backbone:
    """CIFAR-style ResNet-`depth` (depth = 6n + 2; 16-32-64 channels) as a chain of 3n + 1 units."""
    if depth < 8 or (depth - 2) % 6:
        raise ContsupError(f"ResNet depth must be 6n+2 with n >= 1 (20, 32, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    return _chain(f"resnet{depth}", stem(in_channels, 16), [(16, 1, n), (32, 2, n), (64, 2, n)], num_classes)


def resnet_imagenet(depth: int, in_channels: int = 3, num_classes: int = 10, small_images: bool = False) -> Backbone:
    """ImageNet-style ResNet-18 or -34 (BasicBlocks, 64-128-256-512 channels) as a chain of units.

    The stem is conv7x7/2 -> BN -> ReLU -> max-pool 3x3/2, or with `small_images` (CIFAR-sized inputs)
    conv3x3/1 -> BN -> ReLU, which keeps the resolution.
    """
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]
    first = stem(in_channels, 64) if small_images else nn.Sequential(
        nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    )
    stages = [(ch, 1 if i == 0 else 2, n) for i, (ch, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True))]
    return _chain(f"resnet{depth}" + ("-small" if small_images else ""), first, stages, num_classes)


def _chain(name: str, first: nn.Module, stages: list[tuple[int, int, int]], num_classes: int) -> Backbone:
    """Stem, then per stage (channels, stride, blocks) BasicBlocks, pool + linear; unit names (stage, block)."""
    units: list[nn.Module] = [first]
    names: list[tuple[int, int]] = [(0, 0)]
    in_ch = next(m for m in first.modules() if isinstance(m, nn.Conv2d)).out_channels
    for s, (ch, stride, n) in enumerate(stages, start=1):
        for block in range(n):
            units.append(BasicBlock(in_ch, ch, stride if block == 0 else 1))
            names.append((s, block))
            in_ch = ch
    backbone = Backbone(units, Classifier(in_ch, num_classes), unit_names=names, name=name)
    init_weights(backbone)
    return backbone


@BACKBONES.register("resnet32", pattern=r"resnet(\d+)", help="resnetN (N = 6n+2: resnet20, resnet32, resnet110, ...)")
def cifar_resnet(depth: str, in_channels: int, num_classes: int, image_size: int = 32) -> Backbone:
    """CIFAR-style ResNet-(6n+2), the paper's networks."""
    return resnet(int(depth), in_channels, num_classes)


@BACKBONES.register("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size: int = 32) -> Backbone:
    """ImageNet-style ResNet-18."""
    return resnet_imagenet(18, in_channels, num_classes)


@BACKBONES.register("resnet34")
def resnet34(in_channels: int, num_classes: int, image_size: int = 32) -> Backbone:
    """ImageNet-style ResNet-34."""
    return resnet_imagenet(34, in_channels, num_classes)


@BACKBONES.register("resnet18-small")
def resnet18_small(in_channels: int, num_classes: int, image_size: int = 32) -> Backbone:
    """ResNet-18 with the small-image stem (conv3x3/1, no max-pool), for CIFAR-sized inputs."""
    return resnet_imagenet(18, in_channels, num_classes, small_images=True)


@BACKBONES.register("resnet34-small")
def resnet34_small(in_channels: int, num_classes: int, image_size: int = 32) -> Backbone:
    """ResNet-34 with the small-image stem (conv3x3/1, no max-pool), for CIFAR-sized inputs."""
    return resnet_imagenet(34, in_channels, num_classes, small_images=True)

