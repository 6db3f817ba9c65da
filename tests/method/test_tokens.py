import pytest
import torch
import torch.nn.functional as F

from contsup.config import LocalConfig
from contsup.method import LocalNetwork
from contsup.method.context.tokens import TokenImageEncoder, TokenResidualEncoder
from contsup.method.heads.tokens import BlockTokenHead, ClassTokenHead, MeanTokenHead
from contsup.models import build_arch


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear_head_params(d: int, out: int) -> int:
    """LayerNorm (weight, bias) and a linear layer with bias."""
    return 2 * d + d * out + out


def block_params(d: int) -> int:
    return 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)


def ln_linear(v: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """LayerNorm then linear layer, written with the functional ops on the module's `norm` and `fc` weights."""
    normed = F.layer_norm(v, v.shape[-1:], module.norm.weight, module.norm.bias)
    return F.linear(normed, module.fc.weight, module.fc.bias)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randn(3, 17, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("head_cls,extra", [(ClassTokenHead, 0), (MeanTokenHead, 0), (BlockTokenHead, 1)])
def test_head_shapes_and_parameter_counts(head_cls, extra, tokens):
    torch.manual_seed(0)
    head = head_cls(64, 10)
    assert head(tokens).shape == (3, 10)
    assert count(head) == linear_head_params(64, 10) + extra * block_params(64)


def test_class_token_head_reads_token_zero_only(tokens):
    torch.manual_seed(0)
    head = ClassTokenHead(64, 5)
    other = tokens.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])
    assert torch.equal(head(tokens), head(other))
    assert torch.allclose(head(tokens), ln_linear(tokens[:, 0], head), atol=1e-6)


def test_mean_token_head_pools_the_patch_tokens(tokens):
    """LN + linear on the mean of tokens 1..T-1: the class token does not count."""
    torch.manual_seed(0)
    head = MeanTokenHead(64, 5)
    pooled = tokens[:, 1:].sum(dim=1) / 16
    assert torch.allclose(head(tokens), ln_linear(pooled, head), atol=1e-5)
    other = tokens.clone()
    other[:, 0] = 100.0
    assert torch.equal(head(tokens), head(other))


@pytest.mark.parametrize("dim,heads", [(64, 1), (96, 1), (192, 3), (384, 6)])
def test_block_head_attention_heads(dim, heads):
    assert BlockTokenHead(dim, 10).block.attn.heads == heads
    assert BlockTokenHead(dim, 10, heads=2).block.attn.heads == 2


def test_image_encoder_matches_the_vit_tokens():
    """vit-mini on 28 px: 50 tokens; the encoder makes 50 tokens at the cut's width."""
    torch.manual_seed(0)
    net = build_arch("vit-mini", 1, 10, 28)
    x = torch.randn(4, 1, 28, 28)
    enc = TokenImageEncoder(1, 48, 28, 4)
    assert enc(x).shape == (4, net.units[0](x).shape[1], 48) == (4, 50, 48)
    assert count(enc) == 1 * 4 * 4 * 48 + 48 + 50 * 48


def test_image_encoder_class_position_is_its_position_embedding():
    """No patch at the class token: the output there is position embedding row 0, zero at the start."""
    torch.manual_seed(0)
    enc = TokenImageEncoder(3, 32, 30, 4)
    a, b = enc(torch.randn(2, 3, 30, 30)), enc(torch.randn(2, 3, 30, 30))
    assert torch.equal(a[:, 0], torch.zeros(2, 32))
    assert not torch.equal(a[:, 1:], b[:, 1:])
    with torch.no_grad():
        enc.pos_embed[0, 0] = torch.arange(32.0)
    assert torch.equal(enc(torch.randn(2, 3, 30, 30))[:, 0], torch.arange(32.0).expand(2, 32))
    assert enc.pos_embed[0, 1:].std() > 0.01


def test_residual_encoder_per_token(tokens):
    torch.manual_seed(0)
    enc = TokenResidualEncoder(64, 96)
    out = enc(tokens)
    assert out.shape == (3, 17, 96) and count(enc) == linear_head_params(64, 96)
    assert torch.allclose(out[1, 5], ln_linear(tokens[1, 5], enc), atol=1e-6)


def test_context_on_tokens_keeps_gradients_at_the_cut():
    """The network's cut (`module_input`) on a ViT: s_2 = h_1.detach() + E(x) + R(s_1.detach()) feeds module 2;
    module 2's loss reaches its block and the cut's encoders, and nothing of modules 0 and 1."""
    torch.manual_seed(0)
    net = LocalNetwork(build_arch("vit-mini", 1, 10, 28), LocalConfig(modules=3, context="R1E", head="meantoken",
                                                                      cuts="0,1"), torch.zeros(1, 1, 28, 28))
    x = torch.randn(2, 1, 28, 28)
    sources = {0: x}
    s1 = net.module_input(1, net.blocks[0](x), sources)
    h1 = net.blocks[1](s1)
    s2 = net.module_input(2, h1, sources)
    ctx = net.context[1]
    torch.testing.assert_close(s2, h1 + ctx.image(x) + ctx.residual[0](s1), rtol=0, atol=1e-6)
    net.blocks[2](s2).sum().backward()
    assert all(p.grad is None for part in (*net.blocks[:2], net.context[0]) for p in part.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*ctx.parameters(), *net.blocks[2].parameters()])
