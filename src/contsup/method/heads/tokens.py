"""Local heads for token backbones: they read h_k = [B, T, D] and return [B, out_dim] (docs/vit.md, local heads).

A ViT's token 0 is a class token (`Backbone.class_token`); a token model of one's own may have none. Right
after a ViT's patch embedding the class token is the same vector for every image, so a head that reads it
alone would train nothing: `clstoken` refuses such a cut, and `token` takes the mean of the patch tokens there.
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
    """Mean of the patch tokens (a class token left out), LayerNorm, linear layer (timm's `avg` pool)."""

    def __init__(self, dim: int, out_dim: int, class_token: bool = True) -> None:
        super().__init__()
        self.first = 1 if class_token else 0  # the first patch token
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, out_dim)
        init_vit(self)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Head output [B, out_dim] for tokens [B, T, D]."""
        return self.fc(self.norm(h[:, self.first:].mean(dim=1)))


def default_heads(dim: int) -> int:
    """Attention heads of width 64 where `dim` splits into them (ViT-Ti/S), else one head."""
    return dim // 64 if dim % 64 == 0 else 1


class BlockTokenHead(nn.Module):
    """One transformer block, then LayerNorm and a linear layer on the class token (DGL's deeper head, for tokens).

    Without a class token (`class_token` False) the linear layer reads the mean of the block's tokens.
    """

    def __init__(self, dim: int, out_dim: int, heads: int | None = None, class_token: bool = True) -> None:
        super().__init__()
        self.block = Block(dim, heads or default_heads(dim))
        self.head: nn.Module = TokenClassifier(dim, out_dim) if class_token else MeanTokenHead(dim, out_dim, False)
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
    """LayerNorm + Linear on the class token; refused where there is none that carries the image."""
    dim = _token_width(site, "clstoken")
    if site.class_token is None:
        raise ContsupError("head clstoken reads a class token, and this backbone has none: use meantoken or token")
    if not site.live_class_token:
        raise ContsupError(f"head clstoken at cut {site.index} reads the class token after unit {site.unit}, where "
                           "it is the same for every image and nothing would train: use meantoken or token there")
    return ClassTokenHead(dim, site.out_dim)


@HEADS.register("meantoken")
def mean_token_head(site: HeadSite) -> nn.Module:
    """LayerNorm + Linear on the mean of the patch tokens (every token without a class token)."""
    return MeanTokenHead(_token_width(site, "meantoken"), site.out_dim, site.class_token is not None)


@HEADS.register("blocktoken")
def block_token_head(site: HeadSite) -> nn.Module:
    """A transformer block, then LayerNorm + Linear on the class token (on the tokens' mean without one)."""
    return BlockTokenHead(_token_width(site, "blocktoken"), site.out_dim, class_token=site.class_token is not None)


@HEADS.register("token")
def token_head(site: HeadSite) -> nn.Module:
    """clstoken where the class token carries the image, meantoken elsewhere (no class token, or right after
    the patch embedding)."""
    return class_token_head(site) if site.live_class_token else mean_token_head(site)
