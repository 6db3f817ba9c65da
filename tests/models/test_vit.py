import math

import pytest
import torch
import torch.nn.functional as F

from contsup.errors import ContsupError
from contsup.models import build_arch, vit
from contsup.models.vit import Attention, Patchify

# name -> (width D, depth, heads), written out here apart from the library's table
SIZES = {"mini": (64, 8, 4), "tiny": (192, 12, 3), "small": (384, 12, 6)}


def embed_params(c: int, p: int, d: int, tokens: int) -> int:
    """conv p x p (weight + bias), class token, position embedding over patches + class token."""
    return c * p * p * d + d + d + tokens * d


def block_params(d: int) -> int:
    """Two LayerNorms, qkv, output projection, MLP (d -> 4d -> d), every linear with a bias."""
    return 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)


def vit_params(c: int, size: int, p: int, d: int, depth: int, classes: int) -> int:
    tokens = (size // p + (size % p > 0)) ** 2 + 1
    return embed_params(c, p, d, tokens) + depth * block_params(d) + 2 * d + d * classes + classes


@pytest.mark.parametrize("size_name", SIZES)
@pytest.mark.parametrize("suffix,patch,c,size", [("", 4, 1, 28), ("", 4, 3, 32), ("-p7", 7, 1, 28), ("-p4", 4, 3, 30)])
def test_named_vits_parameter_counts(size_name, suffix, patch, c, size):
    d, depth, _ = SIZES[size_name]
    net = build_arch(f"vit-{size_name}{suffix}", c, 10, size)
    assert sum(p.numel() for p in net.parameters()) == vit_params(c, size, patch, d, depth, 10)
    assert len(net.units) == depth + 1 and net.name == f"vit-{size_name}-p{patch}"
    assert net.unit_names == [(0, 0)] + [(1, b) for b in range(depth)]


@pytest.mark.parametrize("name,params", [("vit-tiny-p16", 5_717_416), ("vit-small-p16", 22_050_664)])
def test_deit_sizes_match_published_counts(name, params):
    """DeiT-Ti and DeiT-S at 224 px, 1000 classes (Touvron et al. 2021; timm's counts)."""
    assert vit_params(3, 224, 16, *SIZES[name[4:-4]][:2], 1000) == params
    assert sum(p.numel() for p in build_arch(name, 3, 1000, 224).parameters()) == params


@pytest.mark.quick
def test_unit_shapes_and_classifier():
    torch.manual_seed(0)
    net = build_arch("vit-mini", 1, 10, 28)
    x = torch.randn(2, 1, 28, 28)
    h = net.units[0](x)
    assert h.shape == (2, 7 * 7 + 1, 64)
    for unit in net.units[1:]:
        h = unit(h)
        assert h.shape == (2, 50, 64)
    assert net.classifier(h).shape == (2, 10)
    assert torch.equal(net(x), net.classifier(h))


def test_attention_against_the_formula():
    """softmax(q k^T / sqrt(d_head)) v per head, heads concatenated, then the output projection."""
    torch.manual_seed(0)
    attn = Attention(12, 3)
    x = torch.randn(2, 5, 12)
    q, k, v = attn.qkv(x).split(12, dim=-1)
    heads = []
    for i in range(3):
        qi, ki, vi = (t[..., 4 * i:4 * i + 4] for t in (q, k, v))
        heads.append(torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(4), dim=-1) @ vi)
    expected = attn.proj(torch.cat(heads, dim=-1))
    assert torch.allclose(attn(x), expected, atol=1e-6)


def test_patches_of_an_odd_size_are_zero_padded():
    """A 30 px image with patch 4 embeds as the same image zero-padded to 32 px: ceil(30/4)^2 = 64 patches."""
    torch.manual_seed(0)
    odd, even = Patchify(3, 8, 30, 4), Patchify(3, 8, 32, 4)
    even.load_state_dict(odd.state_dict())
    x = torch.randn(2, 3, 30, 30)
    padded = torch.zeros(2, 3, 32, 32)
    padded[..., :30, :30] = x
    assert odd(x).shape == (2, 64, 8)
    assert torch.equal(odd(x), even(padded))


def test_init_as_timm():
    torch.manual_seed(0)
    net = vit(96, 2, 4, 4, 3, 10, 32)
    block = net.units[1]
    for linear in (block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2], net.classifier.fc):
        assert abs(linear.weight.std().item() - 0.02) < 0.002  # truncated at +-2 absolute, as timm: no effect
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    for norm in (block.norm1, block.norm2, net.classifier.norm):
        assert torch.equal(norm.weight, torch.ones(96)) and torch.equal(norm.bias, torch.zeros(96))
    assert abs(net.units[0].pos_embed.std().item() - 0.02) < 0.002 and net.units[0].cls_token.abs().max() < 0.1


def test_tiny_vit_trains_end_to_end():
    """Its units chained (`Backbone.forward`), a tiny ViT fits a fixed random batch."""
    torch.manual_seed(0)
    net = vit(32, 2, 2, 4, 1, 4, 8)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in net.parameters())


def test_user_errors():
    net = build_arch("vit-mini", 1, 10, 28)
    with pytest.raises(ContsupError, match="takes 28x28 images"):
        net(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ContsupError, match="does not split into 5 attention heads"):
        vit(64, 1, 5, 4)
    with pytest.raises(ContsupError, match="patch size 40"):
        build_arch("vit-mini-p40", 1, 10, 28)


def test_resnets_ignore_the_image_size():
    a, b = build_arch("resnet20", 3, 10, 28), build_arch("resnet20", 3, 10)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
