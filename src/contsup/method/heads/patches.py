"""Patch feature fusion, PFF (from HPFF, Su et al., ECCV 2024; spec/HEADS.md section 3): a head on n x n patches.

The feature map is zero-padded at the bottom and right to multiples of n, cut into n x n non-overlapping
patches that run through the head as one batch, and the head's outputs are averaged over the patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contsup.config import LocalConfig
from contsup.errors import ContsupError, check_int
from contsup.method.heads.registry import HEAD_WRAPPERS, SETTING_CHECKS, HeadBuilder, HeadSite


def to_patches(h: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*n*n, C, ceil(H/n), ceil(W/n)), zero padding; patches of one sample row-major, together."""
    b, c, height, width = h.shape
    ph, pw = -(-height // n), -(-width // n)
    h = F.pad(h, (0, pw * n - width, 0, ph * n - height))
    return h.reshape(b, c, n, ph, n, pw).permute(0, 2, 4, 1, 3, 5).reshape(b * n * n, c, ph, pw)


class PatchAveraged(nn.Module):
    """Runs `head` on the n x n patches of h and averages its outputs over them; n = 1 is the plain head."""

    def __init__(self, head: nn.Module, patches: int) -> None:
        super().__init__()
        if patches < 1:
            raise ContsupError(f"--head-patches must be at least 1, got {patches}")
        self.head = head
        self.patches = patches

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Head output averaged over the patches."""
        if self.patches == 1:
            return self.head(h)
        out = self.head(to_patches(h, self.patches))
        return out.view(h.shape[0], self.patches**2, *out.shape[1:]).mean(dim=1)


@SETTING_CHECKS.append
def check_patches(settings: LocalConfig) -> None:
    """head_patches is a count from 1 (off) to 16."""
    check_int("head_patches", settings.head_patches, 1, 16)


@HEAD_WRAPPERS.register("pff")
def pff(site: HeadSite, inner: HeadBuilder) -> nn.Module:
    """With `head_patches` = n > 1: the inner head on n x n patches of h_k, its outputs averaged."""
    n = site.settings.head_patches
    if n <= 1:
        return inner(site)
    if not site.shape.is_map:
        raise ContsupError("head_patches cuts feature maps into patches; this cut outputs tokens")
    return PatchAveraged(inner(site), n)
