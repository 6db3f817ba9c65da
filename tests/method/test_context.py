import pytest
import torch
from tests.conftest import tiny_net

from contsup.errors import ContsupError
from contsup.method.context import ContextMode, parse_mode


@pytest.mark.parametrize("text,window,image", [("R0", 0, False), ("E", 0, True), ("R1", 1, False),
                                               ("r3e", 3, True), ("R4", 4, False)])
def test_parse_mode(text, window, image):
    assert parse_mode(text, 4) == ContextMode(window, image)


@pytest.mark.parametrize("text", ["R5", "X", "R", "E1", "R-1"])
def test_bad_mode(text):
    with pytest.raises(ContsupError):
        parse_mode(text, 4)


def test_sources_follow_spec():
    # 0-based: R2 at cut 2 (after module 2, whose input is s_2): s_2, s_1. At cut 0: only s_0 = x.
    assert ContextMode(2, False).sources(2) == [2, 1]
    assert ContextMode(2, False).sources(0) == [0]
    # RnE leaves s_0 to the image encoder, so the first cut gets only the image encoder.
    assert ContextMode(1, True).sources(0) == []
    assert ContextMode(2, True).sources(1) == [1]
    assert ContextMode(16, False).sources(2) == [2, 1, 0]
    assert ContextMode(0, True).sources(4) == []


def test_r0_supplies_nothing():
    net = tiny_net(4, "R0")
    assert sum(p.numel() for p in net.context.parameters()) == 0
    h = torch.randn(2, 16, 16, 16)
    assert torch.equal(net.module_input(1, h, {0: torch.randn(2, 3, 16, 16)}), h)


def test_supply_is_detached_input_plus_encoders():
    net = tiny_net(4, "R1E")
    shape = lambda j: (2, *(lambda s: (s.channels, s.height, s.width))(net.source_shapes[j]))  # noqa: E731
    h = torch.randn(*shape(2), requires_grad=True)
    s = {j: torch.randn(*shape(j), requires_grad=True) for j in (0, 1)}
    out = net.module_input(2, h, dict(s))
    out.sum().backward()
    assert h.grad is None and s[0].grad is None and s[1].grad is None
    assert all(p.grad is not None for p in net.context[1].parameters())
    ctx = net.context[1]
    expected = h.detach() + ctx.image(s[0]) + ctx.residual[0](s[1])
    assert torch.allclose(out, expected)
