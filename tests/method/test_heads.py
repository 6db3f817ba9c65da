import math

import pytest
import torch

from contsup.errors import ContsupError
from contsup.method.heads import HEADS, LocalHead
from contsup.method.losses import supcon_loss
from contsup.method.recon import Decoder, ReconWeights, parse_recon


@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("channels,size", [(16, 16), (32, 8), (64, 4)])
def test_head_shapes(kind, channels, size):
    head = LocalHead(channels, kind, 10)
    assert head(torch.randn(4, channels, size, size)).shape == (4, 10)


def test_head_layers_follow_spec():
    h = LocalHead(16, "1c2f", 10)
    conv = h.conv[0]
    assert (conv.in_channels, conv.out_channels, conv.stride, conv.bias) == (16, 32, (2, 2), None)
    assert [m.out_features for m in h.fc if isinstance(m, torch.nn.Linear)] == [128, 10]
    h64 = LocalHead(64, "2c2f", 10)
    assert h64.conv[0].out_channels == 64 and h64.conv[0].stride == (1, 1) and len(h64.conv) == 6
    assert len(LocalHead(16, "0c1f", 10).conv) == 0


def test_unknown_head():
    with pytest.raises(ContsupError):
        LocalHead(16, "3c1f", 10)


def test_supcon_matches_definition():
    torch.manual_seed(0)
    f, y = torch.randn(6, 5), torch.tensor([0, 0, 1, 1, 2, 0])
    z = torch.nn.functional.normalize(f, dim=1)
    total, anchors = 0.0, 0
    for i in range(6):
        pos = [p for p in range(6) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / 0.07) for a in range(6) if a != i)
        total += -sum(float(z[i] @ z[p]) / 0.07 - math.log(denom) for p in pos) / len(pos)
        anchors += 1
    assert supcon_loss(f, y).item() == pytest.approx(total / anchors, rel=1e-5)


def test_supcon_no_positives_is_zero_with_grad():
    f = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(f, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0


def test_decoder_output_in_unit_range():
    dec = Decoder(32, 3, (16, 16))
    out = dec(torch.randn(2, 32, 8, 8))
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert dec.loss(torch.randn(2, 32, 8, 8), torch.rand(2, 3, 16, 16)).item() > 0


def test_recon_interpolation():
    w = ReconWeights(5, 0, 1, 2)
    assert w.at(0, 3) == (5, 0) and w.at(2, 3) == (1, 2) and w.at(1, 3) == (3, 1)
    assert w.at(0, 1) == (5, 0)


def test_parse_recon():
    assert parse_recon("none", "resnet32", "cifar10", 4, False) is None
    assert parse_recon("paper", "resnet32", "cifar10", 16, False) == ReconWeights(5, 0.05, 0.2, 0.5)
    assert parse_recon("paper", "resnet110", "cifar10", 3, True) == ReconWeights(5, 0, 5, 0.1)
    assert parse_recon("1,2,3,4", "x", "y", 2, False) == ReconWeights(1, 2, 3, 4)
    for bad in ("paper", "1,2"):
        with pytest.raises(ContsupError):
            parse_recon(bad, "resnet32", "fashion-mnist", 4, False)
