"""The head registries and what a head builder reads: `HEADS`, `HEAD_WRAPPERS`, `HeadSite`, `local_head`.

A head reads a cut's output h_k and gives the local loss its input. A head builder takes the `HeadSite` (h_k's
shape, every unit's shape and module, the loss's input size, the run's local settings) and returns an
nn.Module. A head wrapper (MAN's momentum copies, PFF's patches) takes the site and the builder of the head
it wraps, and returns the wrapped head, or the inner head untouched when the run's settings leave it off.
A head or wrapper with settings of its own checks them with `@SETTING_CHECKS.append` (run by
`contsup.method.settings.check_local`). docs/method.md, files to add.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.models.chain import Shape
from contsup.registry import Registry


@dataclass(frozen=True)
class HeadSite:
    """What a head builder may read about the cut it sits at."""

    index: int  # cut k (after module k), 0-based
    num_cuts: int  # K - 1
    unit: int  # the unit whose output the head reads (the cut's; behind MAN's copies, the next one)
    shape: Shape  # the head's input shape (unit `unit`'s output shape)
    unit_shapes: tuple[Shape, ...]  # every unit's output shape (for heads modelled on later units)
    image: Shape  # the network input's shape
    out_dim: int  # the local loss's input size
    settings: LocalConfig  # the run's local-learning settings (head widths, AugLocal depth, ...)
    units: tuple[nn.Module, ...] = ()  # every unit of the backbone, not owned (copied by MAN and AugLocal)
    # None: token 0 is no class token (feature maps, a token model of one's own); else per unit whether the
    # class token of its output carries the image (not right after a ViT's patch embedding)
    class_token: tuple[bool, ...] | None = None
    next_stage: int | None = None  # the ResNet stage of the unit after the cut, 0 after the stem (MAN's recon rule)

    @property
    def live_class_token(self) -> bool:
        """Whether the head's input has a class token that differs from image to image."""
        return self.class_token is not None and self.class_token[self.unit]

    @property
    def next_unit(self) -> nn.Module | None:
        """The unit after the one the head reads, if any (MAN's copies follow it)."""
        return self.units[self.unit + 1] if self.unit + 1 < len(self.units) else None


HeadBuilder = Callable[[HeadSite], nn.Module]

# name -> (pattern groups..., site) -> head module
HEADS: Registry[Callable[..., nn.Module]] = Registry("head")
# name -> (site, the inner head's builder) -> the wrapped head; applied in registration order, innermost first
HEAD_WRAPPERS: Registry[Callable[[HeadSite, HeadBuilder], nn.Module]] = Registry("head wrapper")
# checks of the heads' and wrappers' own settings (each raises ContsupError naming the setting)
SETTING_CHECKS: list[Callable[[LocalConfig], None]] = []


def head_kinds(text: str, num_cuts: int) -> list[str]:
    """The head kind of each cut: one kind for all, or a comma-separated kind per cut."""
    kinds = [t.strip() for t in text.split(",")]
    if len(kinds) == 1:
        return kinds * num_cuts
    if len(kinds) != num_cuts:
        raise ContsupError(f"head {text!r} lists {len(kinds)} kinds for {num_cuts} cuts: give one, or one per cut")
    return kinds


def layout_kind(kind: str, shape: Shape) -> str:
    """The head kind a cut of this layout builds: the default `1c2f` reads feature maps; on a token sequence,
    which it cannot convolve, the `token` head (the class token's where it carries the image, else the mean's)."""
    if kind != LocalConfig.head or shape.is_map:
        return kind
    return "token"


def local_head(site: HeadSite, kind: str) -> nn.Module:
    """The head of this site: the registered `kind` inside every registered wrapper (each on or off by its settings)."""

    def build(s: HeadSite) -> nn.Module:  # the innermost head, of the layout of what it reads (MAN: the next unit's)
        return HEADS[layout_kind(kind, s.shape)](s)

    wrapped: HeadBuilder = build
    for name in HEAD_WRAPPERS.names():
        wrapped = functools.partial(HEAD_WRAPPERS[name], inner=wrapped)
    return wrapped(site)
