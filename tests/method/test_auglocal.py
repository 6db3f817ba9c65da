import math
from fractions import Fraction

import pytest
import torch

from contsup.errors import ContsupError
from contsup.method import LocalConfig, LocalNetwork
from contsup.method.heads.auglocal import AugLocalHead, aux_depths, resolution_levels, sample_units
from contsup.models import build_arch, probe_shapes, resnet
from contsup.models.resnet import BasicBlock


def unit_shapes(arch: str, size: int = 32) -> tuple[list[int], list[int]]:
    """Output channels and heights of every unit of a registered backbone on size x size inputs."""
    shapes = probe_shapes(list(build_arch(arch, 3, 10).units), torch.zeros(1, 3, size, size))
    return [s.channels for s in shapes], [s.height for s in shapes]


def exact_depths(d: int, cuts: int, tau: Fraction) -> list[int]:
    """The pyramid rule in exact arithmetic (Fraction rounds half to even, as Python's round does)."""
    ratios = [Fraction(i) * tau / (cuts - 1) for i in range(cuts)]
    return [max(1, round(d * (1 - r) + r)) for r in ratios]


def exact_units(l: int, n: int, d: int) -> list[int]:
    """Sampled units in exact arithmetic, in the spec's order of operations."""
    if d >= n - 1 - l:
        return list(range(l + 1, n))
    return [round(l + Fraction((n - 1 - l) * t, d)) for t in range(1, d + 1)]


def block_params(a: int, b: int, stride: int) -> int:
    """Parameters of BasicBlock(a -> b): two 3x3 convs, two BNs, and a 1x1 conv + BN shortcut on a change."""
    shortcut = a * b + 2 * b if stride != 1 or a != b else 0
    return 9 * a * b + 9 * b * b + 2 * 2 * b + shortcut


def closed_form(C: list[int], l: int, d: int, classes: int = 10) -> int:
    """Head parameters by the official code's channel-ratio stride rule, counted by hand."""
    total, c, pending = 0, C[l], 0
    for j in exact_units(l, len(C), d):
        pending += int(math.log2(C[j] // c))
        stride = 2 if pending >= 1 else 1
        pending -= 1 if stride == 2 else 0
        total += block_params(c, C[j], stride)
        c = C[j]
    bn1d = 2 * c if d <= 1 else 0
    return total + bn1d + c * classes + classes


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resnet32_channels_are_the_papers():
    C, H = unit_shapes("resnet32")
    assert C == [16] * 6 + [32] * 5 + [64] * 5 and H == [32] * 6 + [16] * 5 + [8] * 5


@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize("trim", [False, True])
def test_resnet32_k16_parameter_counts(d, trim):
    C, H = unit_shapes("resnet32")
    cuts = list(range(15))  # K = 16: a cut after every unit but the last
    if trim:
        cuts = cuts[: 15 - d]  # the official K - d modules
    depths = aux_depths(d, len(cuts), 0.5)
    assert depths == exact_depths(d, len(cuts), Fraction(1, 2))
    heads = [AugLocalHead(l, C, H, di, 10) for l, di in zip(cuts, depths, strict=True)]
    for l, di, head in zip(cuts, depths, heads, strict=True):
        assert head.units == exact_units(l, 16, di)
        assert count(head) == closed_form(C, l, di)
    assert sum(map(count, heads)) == sum(closed_form(C, l, di) for l, di in zip(cuts, depths, strict=True))


def test_resnet110_k55_d3_parameter_counts():
    C, H = unit_shapes("resnet110")
    assert C == [16] * 19 + [32] * 18 + [64] * 18
    cuts = list(range(54))
    depths = aux_depths(3, 54, 0.5)
    assert depths == exact_depths(3, 54, Fraction(1, 2))
    total = sum(count(AugLocalHead(l, C, H, di, 10)) for l, di in zip(cuts, depths, strict=True))
    assert total == sum(closed_form(C, l, di) for l, di in zip(cuts, depths, strict=True))


def test_spec_worked_example():
    C, H = unit_shapes("resnet32")
    assert aux_depths(2, 15, 0.5) == [2] * 15  # round(1.5) == 2 at the last cut
    stem = AugLocalHead(0, C, H, 2, 10)
    assert stem.units == [8, 15]
    shapes = [(b.conv1.in_channels, b.conv1.out_channels, b.conv1.stride[0]) for b in stem.blocks]
    assert shapes == [(16, 32, 2), (32, 64, 2)]
    late = AugLocalHead(12, C, H, 2, 10)
    assert late.units == [14, 15]  # round(13.5) == 14, half to even
    shapes = [(b.conv1.in_channels, b.conv1.out_channels, b.conv1.stride[0]) for b in late.blocks]
    assert shapes == [(64, 64, 1), (64, 64, 1)]
    assert all(isinstance(b.shortcut, torch.nn.Identity) for b in late.blocks)


def test_depths_and_sampling_rules():
    assert aux_depths(3, 7, 0.0) == [3] * 7
    assert aux_depths(4, 1, 0.5) == [4]
    assert aux_depths(3, 15, 1.0) == exact_depths(3, 15, Fraction(1))
    assert aux_depths(3, 15, 1.0)[-1] == 1
    assert sample_units(14, 16, 2) == [15]  # fewer units left than the depth: all of them
    for n in (16, 55):
        for l in range(n - 1):
            for d in (1, 2, 3, 5, 6):
                assert sample_units(l, n, d) == exact_units(l, n, d)
    assert sample_units(15, 16, 2) == []  # after the last unit (behind MAN's copies): nothing left to copy
    with pytest.raises(ContsupError):
        sample_units(16, 16, 2)
    with pytest.raises(ContsupError):
        aux_depths(0, 3, 0.5)
    with pytest.raises(ContsupError):
        aux_depths(2, 3, 1.5)


def test_bn1d_follows_depth_not_block_count():
    C, H = unit_shapes("resnet32")
    head = AugLocalHead(14, C, H, 2, 10)  # one block (only unit 15 is left) but depth 2: no BN1d
    assert len(head.blocks) == 1 and isinstance(head.norm, torch.nn.Identity)
    assert isinstance(AugLocalHead(14, C, H, 1, 10).norm, torch.nn.BatchNorm1d)


def test_the_official_codes_partition_is_one_setting_away():
    """The CIFAR code's K - d modules (ResNet-32, K = 16, d = 2: cuts after units 0..12) as an explicit --cuts."""
    net = LocalNetwork(resnet(32, 3, 10), LocalConfig(modules=14, head="auglocal", cuts=",".join(map(str, range(13)))),
                       torch.zeros(1, 3, 32, 32))
    assert net.cuts == list(range(13)) and len(net.blocks[-1]) == 3  # the last module holds the last d + 1 units


def test_resolution_levels_match_channel_ratios_on_imagenet_resnet():
    C, H = unit_shapes("resnet18", 64)
    by_channels = [0]
    for a, b in zip(C, C[1:], strict=False):
        by_channels.append(by_channels[-1] + int(math.log2(b // a)))
    assert resolution_levels(H) == by_channels
    assert resolution_levels([7, 4, 2, 1, 1]) == [0, 1, 2, 3, 3]  # odd sizes round up under stride 2
    with pytest.raises(ContsupError):
        resolution_levels([4, 8])


@pytest.mark.parametrize("arch", ["resnet32", "resnet18"])
def test_forward_shapes(arch):
    C, H = unit_shapes(arch)
    for l in range(len(C) - 1):
        head = AugLocalHead(l, C, H, 2, 10)
        assert head(torch.randn(2, C[l], H[l], H[l])).shape == (2, 10)
        blocks = [b for b in head.blocks if isinstance(b, BasicBlock)]
        assert blocks[-1].conv2.out_channels == C[-1]  # the last unit is always sampled


def test_gradient_reaches_only_head_and_the_units_before_the_cut():
    """The head copies later units' shapes, never their weights: backprop through it reaches the head and the
    units that made h, and none of the units after the cut (which it is modelled on)."""
    torch.manual_seed(0)
    backbone = build_arch("resnet32", 3, 10)
    C, H = unit_shapes("resnet32")
    head = AugLocalHead(3, C, H, 2, 10, [getattr(u, "fresh", None) for u in backbone.units])
    assert not {id(p) for p in head.parameters()} & {id(p) for p in backbone.parameters()}
    h = torch.randn(4, 3, 32, 32)
    for unit in backbone.units[:4]:
        h = unit(h)
    torch.nn.functional.cross_entropy(head(h), torch.arange(4)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(p.grad is not None for u in backbone.units[:4] for p in u.parameters())
    assert all(p.grad is None for u in backbone.units[4:] for p in u.parameters())


class WideBlock(BasicBlock):
    """A block kind of a backbone of one's own: AugLocal's heads must copy it, not a plain BasicBlock."""

    def fresh(self, in_ch: int, out_ch: int, stride: int) -> "WideBlock":
        return WideBlock(in_ch, out_ch, stride)


def test_heads_copy_the_backbones_own_block_kind():
    backbone = build_arch("resnet8", 3, 10)
    backbone.units[2] = WideBlock(16, 32, 2)
    backbone.units[3] = WideBlock(32, 64, 2)
    net = LocalNetwork(backbone, LocalConfig(modules=2, context="R0", head="auglocal", cuts="0"),
                       torch.zeros(1, 3, 16, 16))
    blocks = list(net.objectives[0].head.blocks)
    assert blocks and all(type(b) is WideBlock for b in blocks)


class Wrapped(torch.nn.Module):
    """A unit that runs a block but cannot build another of its kind (no `fresh`)."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def test_a_unit_without_fresh_gets_the_codes_basic_block():
    backbone = build_arch("resnet8", 3, 10)
    backbone.units[2] = WideBlock(16, 32, 2)
    backbone.units[3] = Wrapped(backbone.units[3])
    net = LocalNetwork(backbone, LocalConfig(modules=2, context="R0", head="auglocal", cuts="0"),
                       torch.zeros(1, 3, 16, 16))
    assert [type(b) for b in net.objectives[0].head.blocks] == [WideBlock, BasicBlock]
