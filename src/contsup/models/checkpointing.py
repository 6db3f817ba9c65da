"""Gradient checkpointing over a chain of units: the same function and gradients, less activation memory.

`CheckpointedSequential` runs its units in N contiguous segments. Every segment but the last runs under
`torch.utils.checkpoint` (non-reentrant): its forward keeps only the segment's input for backward, and
the backward recomputes the segment with autograd before back-propagating through it. The last segment
runs plainly (its backward comes first, so recomputing it would save nothing). With N = sqrt(units) the
activations alive at once fall to about the square root of the depth, for one extra forward in time.

The recomputation runs the units a second time in training mode. BatchNorm then normalises with the
same batch statistics (same input, same output), but would also move its running buffers a second time;
`RestoreBuffers` puts every buffer of the recomputed modules back as the forward left it, so running
means, variances and `num_batches_tracked` end exactly as in a plain run. `checkpointed` applies the
same to any module.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from contsup.errors import ContsupError


class RestoreBuffers:
    """A reusable context: on exit, every buffer of `modules` holds again the value it had on entry."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.buffers = [b for m in modules for b in m.buffers()]
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> None:
        self.saved = [b.clone() for b in self.buffers]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for buf, value in zip(self.buffers, self.saved, strict=True):
                buf.copy_(value)
        self.saved = []


def checkpointed(fn: Callable[..., Any], modules: Sequence[nn.Module], *inputs: torch.Tensor) -> Any:
    """fn(*inputs) holding only the inputs for backward; recomputed in backward, `modules`' buffers kept."""
    restore = RestoreBuffers(modules)
    return checkpoint(fn, *inputs, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), restore))


def _chain(units: Sequence[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The units applied one after the other, as one function."""

    def run(x: torch.Tensor) -> torch.Tensor:
        for unit in units:
            x = unit(x)
        return x

    return run


def segment_count(units: int, segments: int | str) -> int:
    """The number of segments: `segments` itself, or round(sqrt(units)) for "sqrt"; at most `units`."""
    if segments == "sqrt":
        return max(1, round(math.sqrt(units)))
    if isinstance(segments, str) or segments < 0:
        raise ContsupError(f"checkpoint segments must be a count >= 0 or 'sqrt', got {segments!r}")
    return min(segments, units)


def segment_bounds(units: int, segments: int) -> list[int]:
    """Unit indices where the segments start, then `units`: N nearly equal runs of units."""
    n = max(segments, 1)
    return [round(i * units / n) for i in range(n + 1)]


class CheckpointedSequential(nn.Sequential):
    """An nn.Sequential of units run in `segments` checkpointed segments (module docstring).

    Its state_dict keys are the plain nn.Sequential's, so weights trained one way load the other.
    Without autograd (inference) it runs plainly.
    """

    def __init__(self, *units: nn.Module, segments: int | str = "sqrt") -> None:
        super().__init__(*units)
        self.segments = segment_count(len(units), segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The units in turn, every segment but the last checkpointed."""
        units = list(self)
        if self.segments <= 1 or not torch.is_grad_enabled():
            return super().forward(x)
        bounds = segment_bounds(len(units), self.segments)
        for a, b in zip(bounds[:-2], bounds[1:-1], strict=True):
            x = checkpointed(_chain(units[a:b]), units[a:b], x)
        return _chain(units[bounds[-2]:])(x)
