import math

import pytest
import torch
from tests.conftest import cut_at

from contsup.errors import ContsupError
from contsup.method.heads import HEADS, LocalHead
from contsup.method.losses import float32_loss, supcon_loss
from contsup.method.recon import Decoder, ReconWeights, parse_recon
from contsup.models.chain import Shape

KINDS = [f"{a}c{b}f" for a in range(3) for b in range(1, 4)]



@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels,size", [(16, 16), (32, 8), (64, 4)])
def test_head_shapes(kind, channels, size):
    head = HEADS[kind](cut_at(Shape((channels, size, size))))
    assert head(torch.randn(4, channels, size, size)).shape == (4, 10)
    convs, fcs = int(kind[0]), int(kind[2])
    assert len([m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]) == convs
    assert len([m for m in head.modules() if isinstance(m, torch.nn.Linear)]) == fcs


def test_head_layers_follow_spec():
    h = LocalHead(Shape((16, 8, 8)), 1, 2, 10)
    conv = h.conv[0]
    assert (conv.in_channels, conv.out_channels, conv.stride, conv.bias) == (16, 32, (2, 2), None)
    assert [m.out_features for m in h.fc if isinstance(m, torch.nn.Linear)] == [128, 10]
    h64 = LocalHead(Shape((64, 4, 4)), 2, 2, 10)
    assert h64.conv[0].out_channels == 64 and h64.conv[0].stride == (1, 1) and len(h64.conv) == 6
    assert len(LocalHead(Shape((16, 8, 8)), 0, 1, 10).conv) == 0


def test_conv_free_head_on_tokens_averages_the_tokens():
    head = HEADS["0c2f"](cut_at(Shape((5, 24), "NLC")))
    h = torch.randn(3, 5, 24)
    assert torch.allclose(head(h), head.fc(h.mean(dim=1)))


def test_heads_refused_in_one_line():
    for kind in ("3c1f", "1c4f", "1c2f\u0661", "1c\u0662f"):
        with pytest.raises(ContsupError):
            HEADS[kind]
    with pytest.raises(ContsupError, match="tokens"):
        HEADS["1c2f"](cut_at(Shape((5, 24), "NLC")))


def test_losses_are_float32_outside_autocast():
    """Under bf16 autocast a loss is still float32: its inputs are cast up and autocast is off inside."""
    logits = torch.randn(4, 10, dtype=torch.bfloat16)
    y = torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seen = []

        def probe(out, target):
            seen.append((out.dtype, torch.is_autocast_enabled("cpu")))
            return torch.nn.functional.cross_entropy(out, target)

        loss = float32_loss(probe, logits, y)
        plain = float32_loss(supcon_loss, torch.randn(4, 8, dtype=torch.bfloat16), y)
    assert seen == [(torch.float32, False)] and loss.dtype == torch.float32 and plain.dtype == torch.float32


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


def test_decoder_gives_logits_and_the_loss_reads_them():
    """The decoder ends without a sigmoid; its loss is BCE-with-logits, equal to sigmoid + BCE, in float32."""
    torch.manual_seed(0)
    dec = Decoder(32, 3, (16, 16))
    h, pixels = torch.randn(2, 32, 8, 8), torch.rand(2, 3, 16, 16)
    out = dec(h)
    assert out.shape == (2, 3, 16, 16) and not isinstance(dec.net[-1], torch.nn.Sigmoid)
    assert out.min() < 0 or out.max() > 1  # logits, not an image
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(out), pixels)
    assert dec.loss(h, pixels).item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dec.loss(h, pixels)
    assert loss.dtype == torch.float32


def test_recon_interpolation():
    w = ReconWeights(5, 0, 1, 2)
    assert w.at(0, 3) == (5, 0) and w.at(2, 3) == (1, 2) and w.at(1, 3) == (3, 1)
    assert w.at(0, 1) == (5, 0)


def test_parse_recon():
    assert parse_recon("none", "resnet32", "cifar10", 4, False) is None
    assert parse_recon("paper", "resnet32", "cifar10", 16, False) == ReconWeights(5, 0.05, 0.2, 0.5)
    assert parse_recon("paper", "resnet110", "cifar10", 3, True) == ReconWeights(5, 0, 5, 0.1)
    assert parse_recon("1,2,3,4", "x", "y", 2, False) == ReconWeights(1, 2, 3, 4)
    for bad in ("paper", "1,2", "1,2,3,nan", "1,2,3,-1", "1,2,3,\u0661"):
        with pytest.raises(ContsupError):
            parse_recon(bad, "resnet32", "fashion-mnist", 4, False)
