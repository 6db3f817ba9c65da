"""Local heads for token backbones: they read h_k = [B, T, D] (the class token first) and return [B, out_dim].

docs/vit.md says why these forms.
"""

from __future__ import annotations

import torch
from torch import nn

from contsup.errors import ContsupError
from contsup.method.heads.registry import HEADS, HeadSite
from contsup.models.vit import Block, TokenClassifier, init_vit


class ClassTokenHead(TokenClassifier):
    """LayerNorm, then a linear layer on the class token: the ViT's own classifier as a local head."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__(dim, out_dim)
        init_vit(self)


class MeanTokenHead(nn.Module):
    """Mean of the patch tokens (the class token left out), LayerNorm, linear layer (timm's `avg` pool)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, out_dim)
        init_vit(self)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Head output [B, out_dim] for tokens [B, T, D]."""
        return self.fc(self.norm(h[:, 1:].mean(dim=1)))


def default_heads(dim: int) -> int:
    """Attention heads of width 64 where `dim` splits into them (ViT-Ti/S), else one head."""
    return dim // 64 if dim % 64 == 0 else 1


class BlockTokenHead(nn.Module):
    """One transformer block, then LayerNorm and a linear layer on the class token (DGL's deeper head, for tokens)."""

    def __init__(self, dim: int, out_dim: int, heads: int | None = None) -> None:
        super().__init__()
        self.block = Block(dim, heads or default_heads(dim))
        self.head = TokenClassifier(dim, out_dim)
        init_vit(self)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Head output [B, out_dim] for tokens [B, T, D]."""
        return self.head(self.block(h))


def _token_width(site: HeadSite, kind: str) -> int:
    """The cut's token width D; a head for tokens refuses feature maps."""
    if site.shape.is_map:
        raise ContsupError(f"head {kind} reads token sequences; this cut outputs feature maps ({site.shape})")
    return site.shape.channels


@HEADS.register("clstoken")
def class_token_head(site: HeadSite) -> nn.Module:
    """LayerNorm + Linear on the class token."""
    return ClassTokenHead(_token_width(site, "clstoken"), site.out_dim)


@HEADS.register("meantoken")
def mean_token_head(site: HeadSite) -> nn.Module:
    """LayerNorm + Linear on the mean of the patch tokens."""
    return MeanTokenHead(_token_width(site, "meantoken"), site.out_dim)


@HEADS.register("blocktoken")
def block_token_head(site: HeadSite) -> nn.Module:
    """A transformer block, then LayerNorm + Linear on the class token."""
    return BlockTokenHead(_token_width(site, "blocktoken"), site.out_dim)
