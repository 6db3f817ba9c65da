"""Context modes (docs/method.md, context modes): which earlier module inputs a cut reads, and whether the image.

Add one with `@CONTEXT_MODES.register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from contsup.errors import ContsupError
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
