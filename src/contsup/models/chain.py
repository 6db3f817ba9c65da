"""A network as a chain of units plus a classifier: the form every cut, head and encoder works on.

Units map features to features in one of two layouts: feature maps (N, C, H, W) or token sequences
(N, T, D). `Shape` is a feature's per-sample shape with its layout; 4-D maps are the fast path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from contsup.errors import ContsupError
from contsup.registry import Registry

# name -> (in_channels, num_classes, image_size) -> Backbone. A family is one file that registers its builders
# (`@BACKBONES.register(name)`; `image_size` is the side of the square input, 32 by default) and is imported
# in `contsup/models/__init__.py`, whose `build_arch` builds by name.
BACKBONES: Registry[Callable[[int, int, int], Backbone]] = Registry("architecture")


class Classifier(nn.Module):
    """Global average pool -> linear: the last module's task head."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from a feature map, a token sequence (both averaged over positions) or a flat feature."""
        return self.fc(pool(h))


def pool(h: torch.Tensor) -> torch.Tensor:
    """The mean over positions: (N, C, H, W) and (N, T, D) -> (N, C) or (N, D); a flat (N, C) is returned as is."""
    if h.dim() == 4:
        return h.mean(dim=(2, 3))
    if h.dim() == 3:
        return h.mean(dim=1)
    return h


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format of a network and its batches (`--channels-last`, else the default contiguous one)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """A 4-D batch in memory format `fmt`; token sequences and labels as they are."""
    return t.contiguous(memory_format=fmt) if t.dim() == 4 else t


Layout = Literal["NCHW", "NLC"]
RANKS: dict[Layout, int] = {"NCHW": 3, "NLC": 2}  # per-sample dimensions of each layout


@dataclass(frozen=True)
class Shape:
    """A feature's per-sample shape and layout: (C, H, W) for a map (NCHW), (T, D) for tokens (NLC)."""

    dims: tuple[int, ...]
    layout: Layout = "NCHW"

    def __post_init__(self) -> None:
        if len(self.dims) != RANKS[self.layout]:
            raise ValueError(f"a {self.layout} shape has {RANKS[self.layout]} dimensions, got {self.dims}")

    @classmethod
    def of(cls, t: torch.Tensor) -> Shape:
        """The shape of a batched tensor: 4-D is a feature map, 3-D a token sequence; anything else is refused."""
        layout = {4: "NCHW", 3: "NLC"}.get(t.dim())
        if layout is None:
            raise ContsupError(f"every unit must output a feature map (N, C, H, W) or a token sequence (N, T, D); "
                               f"got shape {tuple(t.shape)}; a model as written (Flatten, Linear and all) can be "
                               "given whole: contsup.LocalNetwork(model, config, sample) (docs/models.md)")
        return cls(tuple(int(d) for d in t.shape[1:]), layout)  # type: ignore[arg-type]

    @property
    def channels(self) -> int:
        """Features per position: C of a map, D of a token sequence."""
        return self.dims[0] if self.layout == "NCHW" else self.dims[1]

    @property
    def positions(self) -> tuple[int, ...]:
        """(H, W) of a map, (T,) of a token sequence."""
        return self.dims[1:] if self.layout == "NCHW" else self.dims[:1]

    @property
    def is_map(self) -> bool:
        """Whether this is a 4-D feature map (NCHW)."""
        return self.layout == "NCHW"

    @property
    def height(self) -> int:
        """H of a feature map."""
        return self.positions[0]

    @property
    def width(self) -> int:
        """W of a feature map."""
        return self.positions[-1]

    def numel(self) -> int:
        """Elements per sample."""
        return math.prod(self.dims)

    def batch(self, n: int) -> tuple[int, ...]:
        """The full tensor shape for a batch of `n`."""
        return (n, *self.dims)

    def __str__(self) -> str:
        return "x".join(map(str, self.dims)) + ("" if self.is_map else " tokens")


class Backbone(nn.Module):
    """Units applied one after the other, then a classifier; cuts fall between units."""

    def __init__(
        self,
        units: Sequence[nn.Module],
        classifier: nn.Module,
        unit_names: Sequence[tuple[int, int]] | None = None,
        name: str = "custom",
        class_token: bool | None = None,
    ) -> None:
        super().__init__()
        if len(units) == 0:
            raise ContsupError("a backbone needs at least one unit")
        self.units = nn.ModuleList(units)
        self.classifier = classifier
        self.unit_names = list(unit_names) if unit_names else [(0, i) for i in range(len(units))]
        self.unit_labels = [f"{s}.{b}" for s, b in self.unit_names]  # a cut's name after each unit (`--cuts`)
        self.name = name
        self.class_token = class_token  # token 0 of its token units' outputs is a class token; None: unsaid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain end-to-end forward pass."""
        for unit in self.units:
            x = unit(x)
        return self.classifier(x)

    @classmethod
    def from_units(
        cls, units: nn.Sequential | Sequence[nn.Module], num_classes: int, sample: torch.Tensor
    ) -> Backbone:
        """Wrap a user's chain of units (feature maps or token sequences) with pool over positions + linear."""
        units = list(units)
        shapes = probe_shapes(units, sample)
        return cls(units, Classifier(shapes[-1].channels, num_classes))


@torch.no_grad()
def probe_shapes(units: Sequence[nn.Module], sample: torch.Tensor) -> list[Shape]:
    """Output shape of every unit for one sample input (run in eval mode, state left untouched).

    A sample the backbone cannot take (another number of channels, a size too small) is one line.
    """
    if not isinstance(sample, torch.Tensor) or not sample.is_floating_point() or sample.dim() not in (3, 4) \
            or 0 in sample.shape:
        raise ContsupError("the sample must be a float image tensor of shape (C, H, W) or (N, C, H, W), got "
                           f"{tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__}")
    if sample.dim() == 3:
        sample = sample.unsqueeze(0)
    was_training = [u.training for u in units]
    shapes = []
    x = sample[:1]
    try:
        for i, unit in enumerate(units):
            unit.eval()
            try:
                x = unit(x)
            except (RuntimeError, ValueError) as err:
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                raise ContsupError(f"a sample of shape {tuple(sample.shape[1:])} does not fit the backbone: its unit "
                                   f"{i} fails on it ({first})") from None
            shapes.append(Shape.of(x))
    finally:
        for unit, mode in zip(units, was_training, strict=True):
            unit.train(mode)
    return shapes


def has_class_token(tokens: int) -> bool:
    """Whether a sequence of `tokens` holds a class token, read from its length: a square number is a square
    grid of patches alone (for a backbone that does not say, `Backbone.class_token` None)."""
    return math.isqrt(tokens) ** 2 != tokens


def class_token_mixed(shapes: Sequence[Shape]) -> list[bool]:
    """Per unit: whether a class token in its output can carry the image: a token unit after the one that made
    the tokens. Right after a patch embedding the class token is its parameter plus its position, the same
    vector for every image, so a head reading it alone would train nothing. Read from the shapes alone (the
    same on the meta device as on any other)."""
    first = next((i for i, s in enumerate(shapes) if not s.is_map), len(shapes))
    return [not s.is_map and i > first for i, s in enumerate(shapes)]
