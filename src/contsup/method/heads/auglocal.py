"""AugLocal heads (Ma et al., ICLR 2024; spec/HEADS.md section 1), held to the official code ChenxiangMA/AugLocal.

The head of the cut after unit l is a short, freshly initialised copy of the rest of the network: one
block per unit sampled uniformly from the units after the cut (the last unit always among them), of that
unit's own kind where the unit can build one (its `fresh(in_ch, out_ch, stride)`, as the ResNet
BasicBlock here), else the official code's ResNet BasicBlock (a traced model's pieces); then global
average pool -> (BatchNorm1d when the depth is at most 1) -> Linear. No weight is shared with the backbone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from contsup.config import LocalConfig
from contsup.errors import ContsupError, check_float, check_int
from contsup.method.heads.registry import HEADS, SETTING_CHECKS, HeadSite
from contsup.models.resnet import BasicBlock, init_weights

BlockMaker = Callable[[int, int, int], nn.Module]  # (in channels, out channels, stride) -> a fresh block


def aux_depths(depth: int, num_cuts: int, pyramid: float) -> list[int]:
    """Head depth of each of `num_cuts` cuts: max(1, round(d (1 - i tau/(N-1)) + i tau/(N-1))), Python's round.

    `pyramid` (tau) 0 gives every cut depth `depth`; a single cut gets `depth` whatever tau is.
    """
    if depth < 1:
        raise ContsupError(f"--aux-depth must be at least 1, got {depth}")
    if not 0.0 <= pyramid <= 1.0:
        raise ContsupError(f"--aux-pyramid must lie in [0, 1], got {pyramid}")
    depths = []
    for i in range(num_cuts):
        # the official expression, term for term (its N - 1 is local_module_num - 2)
        ratio = (i * pyramid) / (num_cuts - 1) if num_cuts > 1 else 0.0
        depths.append(max(1, round(depth * (1 - ratio) + ratio)))
    return depths


def sample_units(unit: int, num_units: int, depth: int) -> list[int]:
    """Units whose widths and strides the head of the cut after `unit` copies: `depth` of them, the last one last.

    All units after the cut when there are at most `depth` of them (none after the last unit: behind MAN's
    copies the last cut's head reads the last unit's output), else round(l + (n-1-l)/d * t) for t = 1..d
    (the official code's order of operations; Python's round, half to even).
    """
    if not 0 <= unit < num_units:
        raise ContsupError(f"an AugLocal head needs a cut after one of the {num_units} units; got unit {unit}")
    if depth < 1:
        raise ContsupError(f"--aux-depth must be at least 1, got {depth}")
    if depth >= num_units - 1 - unit:
        return list(range(unit + 1, num_units))
    return [round(unit + (num_units - unit - 1) / depth * t) for t in range(1, depth + 1)]


def resolution_levels(sizes: Sequence[int]) -> list[int]:
    """How many times the resolution has halved from unit 0 to each unit (stride-2 steps, odd sizes rounded up)."""
    levels = [0]
    for before, after in zip(sizes, sizes[1:], strict=False):
        if after > before:
            raise ContsupError(f"an AugLocal head needs a backbone whose resolution never grows ({before} -> {after})")
        levels.append(levels[-1] + round(math.log2(before / after)))
    return levels


class AugLocalHead(nn.Module):
    """Head of the cut after unit `unit`: blocks following sampled later units, GAP, (BN1d), Linear.

    `channels` and `sizes` are every unit's output channels and height; `makers` builds each unit's kind of
    block (None, or None for a unit: a ResNet BasicBlock, the official code's). Strides follow the pending-
    downsample rule of the official code: p += the halvings between the previous and the sampled unit;
    stride 2 while p >= 1. The code counts halvings as log2 of the channel ratio; this counts them from
    the heights (`resolution_levels`), which is the same wherever the width doubles exactly where the
    resolution halves (every ResNet of this project, the code's ResNet-32/110 included) and still right
    for backbones whose channel ratios do not say where the resolution drops.
    """

    def __init__(self, unit: int, channels: Sequence[int], sizes: Sequence[int], depth: int, out_dim: int,
                 makers: Sequence[BlockMaker | None] | None = None) -> None:
        super().__init__()
        if len(channels) != len(sizes):
            raise ContsupError(f"AugLocal head: {len(channels)} channel counts for {len(sizes)} unit sizes")
        levels = resolution_levels(sizes)
        self.units = sample_units(unit, len(channels), depth)
        blocks: list[nn.Module] = []
        ch, prev, pending = channels[unit], unit, 0
        for j in self.units:
            pending += levels[j] - levels[prev]
            stride = 1
            if pending >= 1:
                stride, pending = 2, pending - 1
            make = (makers[j] if makers is not None else None) or BasicBlock  # the unit's kind, else the code's
            blocks.append(make(ch, channels[j], stride))
            ch, prev = channels[j], j
        self.blocks = nn.Sequential(*blocks)
        # the CIFAR code normalises the pooled feature only for depth <= 1 (its aux_net_depth, not the block count)
        self.norm: nn.Module = nn.BatchNorm1d(ch) if depth <= 1 else nn.Identity()
        self.fc = nn.Linear(ch, out_dim)
        init_weights(self)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (or a feature of size out_dim) for the cut's output h."""
        return self.fc(self.norm(self.blocks(h).mean(dim=(2, 3))))


@SETTING_CHECKS.append
def check_auglocal(settings: LocalConfig) -> None:
    """aux_depth from 1 to 64 blocks, aux_pyramid in [0, 1]."""
    check_int("aux_depth", settings.aux_depth, 1, 64)
    check_float("aux_pyramid", settings.aux_pyramid, 0.0, 1.0)


@HEADS.register("auglocal")
def auglocal_head(site: HeadSite) -> nn.Module:
    """The AugLocal head of this site: depth from `aux_depth` and the pyramid `aux_pyramid` over the cuts."""
    if not all(s.is_map for s in site.unit_shapes):
        raise ContsupError("head auglocal copies residual blocks of later units: it needs feature maps")
    depth = aux_depths(site.settings.aux_depth, site.num_cuts, site.settings.aux_pyramid)[site.index]
    makers = [getattr(u, "fresh", None) for u in site.units] if site.units else None
    return AugLocalHead(site.unit, [s.channels for s in site.unit_shapes], [s.height for s in site.unit_shapes],
                        depth, site.out_dim, makers)
