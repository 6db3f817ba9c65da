"""Backbones of token units ([B, T, D] -> [B, T, D]) build and train through the same engine as feature maps."""


import pytest
import torch
import torch.nn.functional as F
from tests.conftest import assert_no_gradient_crosses_a_cut, train_end_to_end_and_k1
from torch import nn

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.method import LocalNetwork, local_step
from contsup.models import Backbone, build_arch
from contsup.models.chain import Shape, probe_shapes


class Tokens(nn.Module):
    """Unit 0: 4 x 4 patches of a 1 x 8 x 8 image as 4 tokens of width 12 (`patch` tells context encoders)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, 12, 4, 4)
        self.patch = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mix(nn.Module):
    """A residual token unit: LayerNorm, Linear, GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(12), nn.Linear(12, 12)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.gelu(self.fc(self.norm(h)))


def token_backbone() -> Backbone:
    torch.manual_seed(0)
    units = [Tokens(), *(Mix() for _ in range(5))]
    return Backbone.from_units(units, 10, torch.zeros(1, 1, 8, 8))


def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def test_token_shapes_know_their_layout():
    shapes = probe_shapes(list(token_backbone().units), torch.zeros(1, 1, 8, 8))
    assert shapes == [Shape((4, 12), "NLC")] * 6
    assert (shapes[0].channels, shapes[0].positions, shapes[0].numel()) == (12, (4,), 48)


def test_k1_on_tokens_equals_plain_end_to_end_training():
    """K = 1 over token units is plain end-to-end training, bit for bit, over three SGD steps."""
    x, y = batch()
    plain = token_backbone()
    a, b = train_end_to_end_and_k1(plain, torch.zeros(1, 1, 8, 8), x, y, context="R0")
    for n, p in a.items():
        assert torch.equal(p, b[n]), n


@pytest.mark.parametrize("context,head", [("R0", "0c2f"), ("R1E", "meantoken"), ("R2", "blocktoken")])
def test_local_learning_on_tokens_is_isolated_and_trains(context, head):
    """Cut into 3 modules with a token head: module j's objective changes the gradients of module j's parts
    alone and of every one of its units (conftest's proof), and training lowers every module's loss."""
    x, y = batch()
    net = LocalNetwork(token_backbone(), LocalConfig(modules=3, context=context, head=head), torch.zeros(1, 1, 8, 8))
    assert_no_gradient_crosses_a_cut(net, x, y)
    net.zero_grad()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    first = local_step(net, x, y).losses
    for _ in range(20):
        opt.step()
        opt.zero_grad()
        last = local_step(net, x, y).losses
    assert bool((last < first).all()), (first, last)


def test_vit_cut_into_modules_with_token_context():
    """The registered ViT: R1E at every cut through the token encoders, shapes as the blocks'."""
    torch.manual_seed(0)
    net = LocalNetwork(build_arch("vit-mini", 1, 10, 28), LocalConfig(modules=4, context="R1E", head="clstoken"),
                       torch.zeros(1, 1, 28, 28))
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    sources = {0: x}
    h = net.blocks[0](x)
    s = net.module_input(1, h, sources)
    assert s.shape == h.shape == (4, 50, 64)
    out = local_step(net, x, y)
    assert out.logits.shape == (4, 10) and bool(torch.isfinite(out.losses).all())


def vit_net(head: str, **local) -> LocalNetwork:
    torch.manual_seed(0)
    config = LocalConfig(modules=3, context="R0", head=head, **{"cuts": "0,3", **local})
    return LocalNetwork(build_arch("vit-mini-p7", 1, 10, 14), config, torch.zeros(1, 1, 14, 14))


def test_class_token_right_after_the_patch_embedding_is_refused():
    """At the cut after unit 0 the class token is the same for every image: a clstoken head would train nothing."""
    assert vit_net("meantoken").class_token == (False, *[True] * 8)
    with pytest.raises(ContsupError, match="same for every image"):
        vit_net("clstoken")
    vit_net("meantoken,clstoken")  # the class token carries the image after a block


def test_token_head_at_the_cut_after_the_embedding_trains_the_embedding():
    """The `token` head reads the patch tokens there: the patch projection gets a gradient from module 0's loss."""
    net = vit_net("token")
    x, y = torch.randn(8, 1, 14, 14), torch.randint(0, 10, (8,))
    local_step(net, x, y)
    grad = net.blocks[0][0].patchify.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert type(net.objectives[0].head).__name__ == "MeanTokenHead"
    assert type(net.objectives[1].head).__name__ == "ClassTokenHead"


def test_balanced_cuts_keep_a_class_token_head_off_the_embedding():
    """The memory model gives the cut after the embedding an infinite cost for clstoken: the rule never picks it."""
    torch.manual_seed(0)
    config = LocalConfig(modules=4, context="R0", head="clstoken", cut_table="balanced")
    net = LocalNetwork(build_arch("vit-mini-p7", 1, 10, 14), config, torch.zeros(1, 1, 14, 14))
    assert 0 not in net.cuts


def test_token_heads_on_a_model_without_class_token():
    """A token model of one's own has no class token: clstoken is refused, meantoken averages every token."""
    with pytest.raises(ContsupError, match="has none"):
        LocalNetwork(token_backbone(), LocalConfig(modules=2, context="R0", head="clstoken"), torch.zeros(1, 1, 8, 8))
    net = LocalNetwork(token_backbone(), LocalConfig(modules=2, context="R0", head="meantoken"),
                       torch.zeros(1, 1, 8, 8))
    head = net.objectives[0].head
    h = torch.randn(3, 4, 12)
    assert torch.allclose(head(h), head.fc(head.norm(h.mean(dim=1))))  # token 0 is a patch here, counted
