"""Local heads and context encoders for token backbones ([B, T, D] at every cut, the class token first).

The heads read h_k = [B, T, D] and return [B, out_dim]. The encoders map a context tensor to the cut's
tokens [B, T, D_cut], so METHOD.md's equation stays as it is: s_{k+1} = h_k.detach() + sum M(c.detach())
(docs/vit.md says why these forms).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.method.heads import HEADS
from contsup.models.chain import Shape
from contsup.models.vit import Block, Patchify, TokenClassifier, init_vit, num_patches

DEFAULT_HEAD = LocalConfig.head  # the default head, the paper's 1c2f: it reads feature maps

if TYPE_CHECKING:
    from contsup.method.objective import Cut


class ClassTokenHead(TokenClassifier):
    """LayerNorm, then a linear layer on the class token: the ViT's own classifier as a local head."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__(dim, out_dim)
        init_vit(self)


class MeanTokenHead(nn.Module):
    """Mean of the tokens from `first` on (1 leaves a class token out), LayerNorm, linear layer (timm's `avg` pool)."""

    def __init__(self, dim: int, out_dim: int, first: int = 1) -> None:
        super().__init__()
        self.first = first
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
    """One transformer block, then LayerNorm and a linear layer on the class token (DGL's deeper head, for tokens)."""

    def __init__(self, dim: int, out_dim: int, heads: int | None = None) -> None:
        super().__init__()
        self.block = Block(dim, heads or default_heads(dim))
        self.head = TokenClassifier(dim, out_dim)
        init_vit(self)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Head output [B, out_dim] for tokens [B, T, D]."""
        return self.head(self.block(h))


class TokenImageEncoder(nn.Module):
    """Mode E for tokens: a fresh patch embedding of the image to the cut's width, plus a position embedding.

    With a class token (`tokens` = patches + 1, the default) its slot has no patch: its content is zero, so
    there the output is the position embedding's row 0 for every image, and that row starts at zero (the
    context starts by leaving the class token alone). `tokens` = patches fits backbones without one.
    """

    def __init__(self, in_channels: int, dim: int, image_size: int, patch: int, tokens: int | None = None) -> None:
        super().__init__()
        self.patchify = Patchify(in_channels, dim, image_size, patch)
        patches = num_patches(image_size, patch)
        self.extra = (patches + 1 if tokens is None else tokens) - patches
        if self.extra not in (0, 1):
            raise ContsupError(f"the cut has {tokens} tokens; {image_size} px images in patches of {patch} give "
                               f"{patches} (plus a class token at most)")
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + self.extra, dim))
        nn.init.trunc_normal_(self.pos_embed[:, self.extra:], std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded image [B, T, D] for images [B, C, H, W]."""
        tokens = self.patchify(x)
        if self.extra:
            tokens = torch.cat([tokens.new_zeros(tokens.shape[0], 1, tokens.shape[2]), tokens], dim=1)
        return tokens + self.pos_embed


class TokenResidualEncoder(nn.Module):
    """Mode Rn for tokens: LayerNorm and a linear layer on every token, source width -> the cut's width."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc = nn.Linear(in_dim, dim)
        init_vit(self)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Encoded tokens [B, T, D_cut] for tokens [B, T, D_src]."""
        return self.fc(self.norm(s))


def has_class_token(tokens: int) -> bool:
    """Whether a sequence of `tokens` holds a class token: a square number is a square grid of patches alone."""
    return math.isqrt(tokens) ** 2 != tokens


def _token_cut(cut: Cut, kind: str) -> int:
    """The cut's token width D; a head for tokens refuses feature maps."""
    if cut.shape.is_map:
        raise ContsupError(f"head {kind} reads token sequences; this cut outputs feature maps ({cut.shape})")
    return cut.shape.channels


@HEADS.register("clstoken")
def class_token_head(cut: Cut) -> nn.Module:
    """LayerNorm + Linear on the class token."""
    return ClassTokenHead(_token_cut(cut, "clstoken"), cut.out_dim)


@HEADS.register("meantoken")
def mean_token_head(cut: Cut) -> nn.Module:
    """LayerNorm + Linear on the mean of the patch tokens (the class token left out where there is one)."""
    dim = _token_cut(cut, "meantoken")
    return MeanTokenHead(dim, cut.out_dim, first=int(has_class_token(cut.shape.positions[0])))


@HEADS.register("blocktoken")
def block_token_head(cut: Cut) -> nn.Module:
    """A transformer block, then LayerNorm + Linear on the class token."""
    return BlockTokenHead(_token_cut(cut, "blocktoken"), cut.out_dim)


def layout_kind(kind: str, shape: Shape) -> str:
    """The head kind a cut of this layout builds: the default `1c2f` reads feature maps; on a token sequence,
    which it cannot convolve, the class token's head where there is one (`has_class_token`), else the mean token's."""
    if kind != DEFAULT_HEAD or shape.is_map:
        return kind
    return "clstoken" if has_class_token(shape.positions[0]) else "meantoken"
