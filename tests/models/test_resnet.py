import pytest
import torch
from torch import nn

from contsup.errors import ContsupError
from contsup.models import Backbone, build_arch, probe_shapes, resnet


@pytest.mark.parametrize("depth,units", [(20, 10), (32, 16), (56, 28), (110, 55)])
def test_resnet_units_and_names(depth, units):
    net = resnet(depth, 3, 10)
    assert len(net.units) == units
    n = (depth - 2) // 6
    assert net.unit_names[0] == (0, 0)
    assert net.unit_names[-1] == (3, n - 1)


def test_resnet32_parameter_count():
    # He et al.'s option-A ResNet-32 has 464,154 parameters; the spec's 1x1 conv + BN projections add
    # 16*32 + 2*32 and 32*64 + 2*64 at the two stage changes.
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert sum(p.numel() for p in resnet(32, 3, 10).parameters()) == 464_154 + projections


@pytest.mark.quick
@pytest.mark.parametrize("in_ch,size", [(1, 28), (3, 32), (3, 96)])
def test_shapes_any_input(in_ch, size):
    net = resnet(20, in_ch, 7)
    shapes = probe_shapes(list(net.units), torch.zeros(1, in_ch, size, size))
    assert shapes[0].channels == 16 and shapes[0].height == size
    assert shapes[-1].channels == 64 and shapes[-1].height == (size + 3) // 4
    assert net(torch.zeros(2, in_ch, size, size)).shape == (2, 7)


def test_probe_leaves_bn_stats_untouched():
    net = resnet(20, 3, 10)
    before = net.units[0][1].running_mean.clone()
    probe_shapes(list(net.units), torch.randn(1, 3, 8, 8) * 5)
    assert torch.equal(before, net.units[0][1].running_mean)
    assert net.units[0].training


def test_bad_depth_and_arch():
    with pytest.raises(ContsupError):
        resnet(33)
    with pytest.raises(ContsupError):
        build_arch("vgg16", 3, 10)


def test_from_units_user_chain():
    units = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1))
    bb = Backbone.from_units(units, 5, torch.zeros(1, 3, 16, 16))
    assert bb(torch.zeros(2, 3, 16, 16)).shape == (2, 5)
    flat = nn.Sequential(nn.Flatten())
    with pytest.raises(ContsupError):
        Backbone.from_units(flat, 5, torch.zeros(1, 3, 16, 16))
