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
from contsup.method.lean import lean_encode, supported
from contsup.method.tokens import TokenImageEncoder, TokenResidualEncoder
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
    """Adaptive average pool to `size`; no work when the size already matches.

    When `size` divides the input's size, the same averages come from the faster plain average pool.
    """
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h % size[0] == 0 and w % size[1] == 0:
        return F.avg_pool2d(x, (h // size[0], w // size[1]))
    return F.adaptive_avg_pool2d(x, size)


IMAGE_ENCODERS = ["paper", "pooled"]


def check_image_encoder(name: str) -> None:
    """An image encoder variant must be one of IMAGE_ENCODERS."""
    if name not in IMAGE_ENCODERS:
        raise ContsupError(f"unknown image encoder {name!r}; choose from {', '.join(IMAGE_ENCODERS)}")


class ConvEncoder(nn.Module):
    """conv-BN-ReLU layers (`net`) and an adaptive average pool to the cut's size, after them or first.

    `lean` computes the same function holding only its input for backward (contsup.method.lean; with plain
    BatchNorm layers: the pipeline's synchronised BatchNorm runs the straightforward way);
    `max_elements` bounds, per sample, the full-resolution intermediates the lean version makes at once.
    """

    def __init__(self, net: nn.Sequential, target: Shape, pool_first: bool, lean: bool, max_elements: int) -> None:
        super().__init__()
        self.net = net
        self.size = (target.height, target.width)
        self.pool_first = pool_first
        self.lean = lean
        self.max_elements = max_elements

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Adaptive average pool to the cut's size."""
        return adaptive_pool(x, self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded input at the cut's shape."""
        if self.lean and supported(self):
            return lean_encode(self, x)
        if self.pool_first:
            return self.net(self.pool(x))
        return self.pool(self.net(x))


class ImageEncoder(ConvEncoder):
    """Mode E: conv3x3(in -> 12) -> BN -> ReLU -> conv3x3(12 -> C) -> BN -> ReLU -> pool to h_k's size.

    `pool_first` is a cheaper variant that is not the paper's: the image is pooled to h_k's size first,
    so both convolutions run at the cut's resolution (same parameters, different function).
    """

    def __init__(
        self, in_ch: int, target: Shape, hidden: int = 12, pool_first: bool = False, lean: bool = False,
        max_elements: int = 0,
    ) -> None:
        net = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 3, 1, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, target.channels, 3, 1, 1),
            nn.BatchNorm2d(target.channels),
            nn.ReLU(inplace=True),
        )
        super().__init__(net, target, pool_first, lean, max_elements)


class ResidualEncoder(ConvEncoder):
    """Mode Rn: conv1x1(C_src -> C) -> BN -> ReLU -> pool to h_k's size."""

    def __init__(self, in_ch: int, target: Shape, lean: bool = False, max_elements: int = 0) -> None:
        net = nn.Sequential(
            nn.Conv2d(in_ch, target.channels, 1), nn.BatchNorm2d(target.channels), nn.ReLU(inplace=True)
        )
        super().__init__(net, target, False, lean, max_elements)


def token_encoder(source: Shape, target: Shape, patch: int | None) -> nn.Module:
    """The encoder of one source at a token cut: the image through a patch embedding, tokens per token."""
    if not source.is_map:
        return TokenResidualEncoder(source.channels, target.channels)
    if patch is None or source.height != source.width:
        raise ContsupError("context from the image at a token cut needs square images and the backbone's patch size "
                           "(its first unit's `patch`)")
    return TokenImageEncoder(source.channels, target.channels, source.height, patch, target.positions[0])


LOCAL_INITS = ["torch", "kaiming"]


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
    cut that outputs tokens the encoders are the token ones (contsup.method.tokens): the image (s_0) through
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

    def forward(self, h: torch.Tensor, sources: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """h_k^c = h_k.detach() + sum of the encoded, detached context (sources indexed by j)."""
        out = h.detach()
        if self.image is not None:
            out = out + self.image(sources[0].detach())
        for j, enc in zip(self.source_ids, self.residual, strict=True):
            out = out + enc(sources[j].detach())
        return out
