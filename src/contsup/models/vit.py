"""Vision Transformers (Dosovitskiy et al. 2021; DeiT settings, Touvron et al. 2021) as chains of units.

Unit 0 is the patch embedding ([B, C, H, W] -> [B, T, D], T = patches + 1 class token), units 1..depth are
pre-norm transformer blocks ([B, T, D] -> [B, T, D]); the classifier is a final LayerNorm and a linear
layer on the class token. Names (docs/vit.md): `vit-mini`, `vit-tiny`, `vit-small`, each with an optional
`-pP` patch size (default 4, for 28 or 32 px images; `vit-tiny-p16` and `vit-small-p16` are DeiT-Ti/S
at 224 px).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from contsup.errors import ContsupError
from contsup.models.chain import BACKBONES, Backbone

# size name -> (width D, depth, attention heads)
VIT_SIZES = {"mini": (64, 8, 4), "tiny": (192, 12, 3), "small": (384, 12, 6)}
DEFAULT_PATCH = 4


def num_patches(image_size: int, patch: int) -> int:
    """Patches of a square image, its sides zero-padded up to a multiple of `patch`: ceil(size / patch)^2."""
    return math.ceil(image_size / patch) ** 2


def init_vit(module: nn.Module) -> None:
    """As timm/DeiT: linear weights truncated normal (std 0.02) with zero biases, LayerNorm ones and zeros."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Patchify(nn.Module):
    """conv p x p, stride p over the zero-padded image, flattened: [B, C, H, W] -> [B, patches, D]."""

    def __init__(self, in_channels: int, dim: int, image_size: int, patch: int) -> None:
        super().__init__()
        if not 1 <= patch <= image_size:
            raise ContsupError(f"patch size {patch} must be from 1 to the image size {image_size}")
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)
        self.image_size = image_size
        self.pad = (-image_size) % patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens, row by row."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ContsupError(f"this ViT takes {self.image_size}x{self.image_size} images, got {tuple(x.shape)}")
        if self.pad:
            x = F.pad(x, (0, self.pad, 0, self.pad))
        return self.proj(x).flatten(2).transpose(1, 2)


class PatchEmbedding(nn.Module):
    """Unit 0: patch tokens, a learned class token in front, plus a learned position embedding."""

    def __init__(self, in_channels: int, dim: int, image_size: int, patch: int) -> None:
        super().__init__()
        self.patchify = Patchify(in_channels, dim, image_size, patch)
        self.patch = patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches(image_size, patch) + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, D], the class token first."""
        tokens = self.patchify(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed


class Attention(nn.Module):
    """Multi-head self-attention: one qkv linear layer, scaled dot-product attention, an output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ContsupError(f"width {dim} does not split into {heads} attention heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attended tokens, same shape as `x`."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) with GELU and hidden width 4 D."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output [B, T, D]."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenClassifier(nn.Module):
    """Final LayerNorm, then a linear layer on the class token (token 0)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from tokens [B, T, D]."""
        return self.fc(self.norm(h[:, 0]))


def vit(
    dim: int, depth: int, heads: int, patch: int, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
    name: str = "vit",
) -> Backbone:
    """A ViT as a chain of 1 + depth units: patch embedding (unit (0, 0)), then blocks (1, 0) .. (1, depth - 1)."""
    units: list[nn.Module] = [PatchEmbedding(in_channels, dim, image_size, patch)]
    units += [Block(dim, heads) for _ in range(depth)]
    names = [(0, 0)] + [(1, b) for b in range(depth)]
    backbone = Backbone(units, TokenClassifier(dim, num_classes), unit_names=names, name=name, class_token=True)
    init_vit(backbone)
    return backbone


@BACKBONES.register(
    "vit-mini", pattern=r"vit-(mini|tiny|small)(?:-p(\d+))?",
    help="vit-mini|tiny|small[-pP] (patch P, default 4; vit-tiny-p16, vit-small-p16: DeiT-Ti/S at 224 px)",
)
def named_vit(size: str, patch: str | None, in_channels: int, num_classes: int, image_size: int = 32) -> Backbone:
    """A named ViT size (VIT_SIZES) with patch P (default 4) for square images of side `image_size`."""
    dim, depth, heads = VIT_SIZES[size]
    p = int(patch) if patch else DEFAULT_PATCH
    return vit(dim, depth, heads, p, in_channels, num_classes, image_size, name=f"vit-{size}-p{p}")
