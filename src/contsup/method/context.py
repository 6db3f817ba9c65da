"""Context Supply (docs/method.md, context): tiny encoders that add earlier information to a cut's detached output.

    h_k^c = h_k.detach() + sum_j M_kj(c_j.detach())

Indices are 0-based as everywhere (see `contsup.method.network`): s_j is module j's input (s_0 = x),
and cut k, after module k, turns h_k into s_{k+1} = h_k^c.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from contsup.errors import ContsupError
from contsup.models.chain import Shape
from contsup.registry import Registry


@dataclass(frozen=True)
class ContextMode:
    """A context mode: a window of n earlier module inputs, and/or the image encoder."""

    window: int
    image: bool

    @property
    def name(self) -> str:
        """The paper's name: R0, E, Rn or RnE."""
        if self.image and self.window == 0:
            return "E"
        return f"R{self.window}" + ("E" if self.image else "")

    def sources(self, cut: int) -> list[int]:
        """Indices j of the module inputs s_j that cut `cut` (after module `cut`) reads, newest first.

        s_cut (module `cut`'s own input) back to s_{cut-n+1}; RnE leaves s_0 = x to the image encoder.
        """
        lowest = max(cut + 1 - self.window, 1 if self.image else 0)
        return list(range(cut, lowest - 1, -1))


# Context modes by name: each returns the ContextMode (docs/method.md, context modes).
CONTEXT_MODES: Registry[Callable[..., ContextMode]] = Registry("context mode")


@CONTEXT_MODES.register("R0")
def plain() -> ContextMode:
    """No context: plain greedy local learning."""
    return ContextMode(0, False)


@CONTEXT_MODES.register("E")
def image() -> ContextMode:
    """The network input x through the image encoder."""
    return ContextMode(0, True)


@CONTEXT_MODES.register("R1", pattern=r"R(\d+)", help="Rn")
def residual(n: str) -> ContextMode:
    """The last n module inputs, each through a residual encoder."""
    return ContextMode(int(n), False)


@CONTEXT_MODES.register("R1E", pattern=r"R(\d+)E", help="RnE (n >= 1, e.g. R1E)")
def residual_image(n: str) -> ContextMode:
    """Rn and E summed (s_0 = x comes through the image encoder only)."""
    return ContextMode(int(n), True)


def parse_mode(text: str, modules: int) -> ContextMode:
    """The registered context mode named `text` (any case), checking n <= K."""
    mode = CONTEXT_MODES[text.strip().upper()]()
    if mode.window > modules:
        raise ContsupError(f"context {text!r}: n = {mode.window} is larger than the number of modules K = {modules}")
    return mode


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
