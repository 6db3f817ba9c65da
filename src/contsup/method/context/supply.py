"""Context Supply (docs/method.md, context): tiny encoders that add earlier information to a cut's detached output.

    h_k^c = h_k.detach() + sum_j M_kj(c_j.detach())

Indices are 0-based as everywhere (see `contsup.method.network`): s_j is module j's input (s_0 = x),
and cut k, after module k, turns h_k into s_{k+1} = h_k^c.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from contsup.config import LocalConfig, choices
from contsup.errors import ContsupError
from contsup.method.context.conv import ImageEncoder, ResidualEncoder
from contsup.method.context.modes import ContextMode
from contsup.method.context.tokens import token_encoder
from contsup.models.chain import Shape

IMAGE_ENCODERS = choices(LocalConfig, "image_encoder")


def check_image_encoder(name: str) -> None:
    """An image encoder variant must be one of IMAGE_ENCODERS."""
    if name not in IMAGE_ENCODERS:
        raise ContsupError(f"unknown image encoder {name!r}; choose from {', '.join(IMAGE_ENCODERS)}")


LOCAL_INITS = choices(LocalConfig, "local_init")


def init_local_modules(heads: Sequence[nn.Module], context: Sequence[CutContext], local_init: str,
                       context_scale: float) -> None:
    """Optional initialisations of the heads and encoders (both off by default: nothing is touched then).

    `local_init = "kaiming"`: Kaiming normal (fan-out) on every convolution of the heads and the context
    encoders, as the paper's reference code does (ours otherwise keeps PyTorch's defaults there).
    `context_scale`: initial weight of each encoder's last BatchNorm (1.0, the default, is the paper's; a
    smaller one makes context start small). Encoder outputs are non-negative and every module's identity
    shortcut carries them on, so at full scale they pile up along the residual stream (docs/journal.md).
    """
    if local_init not in LOCAL_INITS:
        raise ContsupError(f"unknown local init {local_init!r}; choose from {', '.join(LOCAL_INITS)}")
    if local_init == "kaiming":
        for m in [*(m for head in heads for m in head.modules()), *(m for ctx in context for m in ctx.modules())]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if context_scale != 1.0:
        for ctx in context:
            for enc in [*ctx.residual, *([ctx.image] if ctx.image is not None else [])]:
                bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
                if not bns:
                    raise ContsupError("context_scale sets the encoders' last BatchNorm; token encoders have none")
                nn.init.constant_(bns[-1].weight, context_scale)


class CutContext(nn.Module):
    """Every encoder at one cut, and the sum that supplies h_k with context.

    `lean` and `max_elements` as in ConvEncoder (the default bound: the largest source, per sample). At a
    cut that outputs tokens the encoders are the token ones (`tokens.py`): the image (s_0) through
    a fresh patch embedding of patch size `patch` (the backbone's), token sources through LayerNorm + Linear.
    """

    def __init__(
        self, cut: int, mode: ContextMode, source_shapes: Sequence[Shape], target: Shape, image_encoder: str = "paper",
        lean: bool = False, max_elements: int | None = None, patch: int | None = None,
    ) -> None:
        super().__init__()
        check_image_encoder(image_encoder)
        self.cut = cut
        self.source_ids = mode.sources(cut)
        bound = max(s.numel() for s in source_shapes) if max_elements is None else max_elements
        if target.is_map:
            self.residual = nn.ModuleList(
                ResidualEncoder(source_shapes[j].channels, target, lean, bound) for j in self.source_ids)
            self.image = ImageEncoder(source_shapes[0].channels, target, pool_first=image_encoder == "pooled",
                                      lean=lean, max_elements=bound) if mode.image else None
        else:
            self.residual = nn.ModuleList(
                token_encoder(source_shapes[j], target, patch) for j in self.source_ids)
            self.image = token_encoder(source_shapes[0], target, patch) if mode.image else None

    def forward(self, h: torch.Tensor, sources: Mapping[int, torch.Tensor], keep_graph: bool = False) -> torch.Tensor:
        """h_k^c = h_k.detach() + sum of the encoded, detached context (sources indexed by j); `keep_graph`: h_k
        itself, not detached (HPFF's cascade's second path, `LocalNetwork.second_input`)."""
        # keep_graph: a view, a node of its own, so module tracking (FLOP counts) ends this module's backward at h
        out = h.view_as(h) if keep_graph else h.detach()
        if self.image is not None:
            out = out + self.image(sources[0].detach())
        for j, enc in zip(self.source_ids, self.residual, strict=True):
            out = out + enc(sources[j].detach())
        return out
