"""Context Supply (spec §2): tiny encoders that add earlier information to a cut's detached output.

    h_k^c = h_k.detach() + sum_j M_kj(c_j.detach())

Sources are numbered as in the paper: s_0 = x (the network input), s_j = h_j^c (module j+1's input).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from contsup.errors import ContsupError
from contsup.models.chain import Shape

_MODE = re.compile(r"R(\d+)(E?)|E")


@dataclass(frozen=True)
class ContextMode:
    """A parsed context mode: a window of n earlier module inputs, and/or the image encoder."""

    window: int
    image: bool

    @property
    def name(self) -> str:
        """The paper's name: R0, E, Rn or RnE."""
        if self.image and self.window == 0:
            return "E"
        return f"R{self.window}" + ("E" if self.image else "")

    def sources(self, cut: int) -> list[int]:
        """Indices j of the module inputs s_j that feed cut `cut` (1-based: after module `cut`)."""
        lowest = max(cut - self.window, 1 if self.image else 0)
        return list(range(cut - 1, lowest - 1, -1))


def parse_mode(text: str, modules: int) -> ContextMode:
    """Parse `R0`, `E`, `Rn` or `RnE` and check n <= K."""
    match = _MODE.fullmatch(text.strip().upper())
    if not match:
        raise ContsupError(f"unknown context mode {text!r}; use R0, E, Rn or RnE (n >= 1), e.g. R1E")
    if text.strip().upper() == "E":
        return ContextMode(0, True)
    n, image = int(match.group(1)), bool(match.group(2))
    if n > modules:
        raise ContsupError(f"context {text!r}: n = {n} is larger than the number of modules K = {modules}")
    if n == 0 and image:
        return ContextMode(0, True)
    return ContextMode(n, image)


def adaptive_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pool to `size`; no work when the size already matches."""
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)


IMAGE_ENCODERS = ["paper", "pooled"]


def check_image_encoder(name: str) -> None:
    """An image encoder variant must be one of IMAGE_ENCODERS."""
    if name not in IMAGE_ENCODERS:
        raise ContsupError(f"unknown image encoder {name!r}; choose from {', '.join(IMAGE_ENCODERS)}")


class ImageEncoder(nn.Module):
    """Mode E: conv3x3(in -> 12) -> BN -> ReLU -> conv3x3(12 -> C) -> BN -> ReLU -> pool to h_k's size.

    `pool_first` is a cheaper variant that is not the paper's: the image is pooled to h_k's size first,
    so both convolutions run at the cut's resolution (same parameters, different function).
    """

    def __init__(self, in_ch: int, target: Shape, hidden: int = 12, pool_first: bool = False) -> None:
        super().__init__()
        self.size = (target.height, target.width)
        self.pool_first = pool_first
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 3, 1, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, target.channels, 3, 1, 1),
            nn.BatchNorm2d(target.channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded image at h_k's shape."""
        if self.pool_first:
            return self.net(adaptive_pool(x, self.size))
        return adaptive_pool(self.net(x), self.size)


class ResidualEncoder(nn.Module):
    """Mode Rn: conv1x1(C_src -> C) -> BN -> ReLU -> pool to h_k's size."""

    def __init__(self, in_ch: int, target: Shape) -> None:
        super().__init__()
        self.size = (target.height, target.width)
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, target.channels, 1), nn.BatchNorm2d(target.channels), nn.ReLU(inplace=True)
        )

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Encoded earlier module input at h_k's shape."""
        return adaptive_pool(self.net(s), self.size)


LOCAL_INITS = ["torch", "kaiming"]


def init_local_modules(heads: nn.Module, context: Sequence[CutContext], local_init: str, context_scale: float) -> None:
    """Optional initialisations of the heads and encoders (both off by default: nothing is touched then).

    `local_init = "kaiming"`: Kaiming normal (fan-out) on every convolution of the heads and the context
    encoders, as the paper's reference code does (ours otherwise keeps PyTorch's defaults there).
    `context_scale`: initial weight of each encoder's last BatchNorm (1.0, the default, is the paper's; a
    smaller one makes context start small). Encoder outputs are non-negative and every module's identity
    shortcut carries them on, so at full scale they pile up along the residual stream (docs/notes.md).
    """
    if local_init not in LOCAL_INITS:
        raise ContsupError(f"unknown local init {local_init!r}; choose from {', '.join(LOCAL_INITS)}")
    if local_init == "kaiming":
        for m in [*heads.modules(), *(m for ctx in context for m in ctx.modules())]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if context_scale != 1.0:
        for ctx in context:
            for enc in [*ctx.residual, *([ctx.image] if ctx.image is not None else [])]:
                last_bn = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)][-1]
                nn.init.constant_(last_bn.weight, context_scale)


class CutContext(nn.Module):
    """Every encoder at one cut, and the sum that supplies h_k with context."""

    def __init__(
        self, cut: int, mode: ContextMode, source_shapes: Sequence[Shape], target: Shape, image_encoder: str = "paper"
    ) -> None:
        super().__init__()
        check_image_encoder(image_encoder)
        self.cut = cut
        self.source_ids = mode.sources(cut)
        self.residual = nn.ModuleList(ResidualEncoder(source_shapes[j].channels, target) for j in self.source_ids)
        pool_first = image_encoder == "pooled"
        self.image = ImageEncoder(source_shapes[0].channels, target, pool_first=pool_first) if mode.image else None

    def forward(self, h: torch.Tensor, sources: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """h_k^c = h_k.detach() + sum of the encoded, detached context (sources indexed by j)."""
        out = h.detach()
        if self.image is not None:
            out = out + self.image(sources[0].detach())
        for j, enc in zip(self.source_ids, self.residual, strict=True):
            out = out + enc(sources[j].detach())
        return out
