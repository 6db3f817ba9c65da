"""Context encoders for token cuts: each maps a context tensor to the cut's tokens [B, T, D_cut], so the
method's equation stays as it is: s_{k+1} = h_k.detach() + sum M(c.detach()) (docs/vit.md says why these forms).
"""

from __future__ import annotations

import torch
from torch import nn

from contsup.errors import ContsupError
from contsup.models.chain import Shape
from contsup.models.vit import Patchify, init_vit, num_patches


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


def token_encoder(source: Shape, target: Shape, patch: int | None) -> nn.Module:
    """The encoder of one source at a token cut: the image through a patch embedding, tokens per token."""
    if not source.is_map:
        return TokenResidualEncoder(source.channels, target.channels)
    if patch is None or source.height != source.width:
        raise ContsupError("context from the image at a token cut needs square images and the backbone's patch size "
                           "(its first unit's `patch`)")
    return TokenImageEncoder(source.channels, target.channels, source.height, patch, target.positions[0])
