"""Features at unit boundaries of a frozen LocalNetwork: h (a module's output) and h^c (what comes next).

Boundaries are named like cuts: "after unit u". At a cut of the network, h = h_k (the module's output)
and h^c = h_k^c (h_k supplied with context, what module k+1 reads). Anywhere else (inside a module,
e.g. every boundary of an end-to-end network) nothing is added, so h^c is h.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from contsup.errors import ContsupError
from contsup.method.cuts.rules import from_named, parse_cut_list, validate_cuts
from contsup.method.network import LocalNetwork


@dataclass
class CutFeatures:
    """Features of every example after one unit: h, h^c (the same tensor where no context is added)."""

    unit: int
    name: str  # "stage.block"
    h: torch.Tensor
    hc: torch.Tensor

    @property
    def supplied(self) -> bool:
        """Whether context was added here (else h^c is h itself)."""
        return self.hc is not self.h


def unit_label(name: tuple[int, int]) -> str:
    """A unit's (stage, block) name as "stage.block"."""
    return f"{name[0]}.{name[1]}"


def parse_units(text: str, unit_names: Sequence[tuple[int, int]]) -> list[int]:
    """`--units`: "all" (every boundary but the last unit's) or unit indices / stage.block pairs."""
    if text.strip().lower() == "all":
        return list(range(len(unit_names) - 1))
    items = parse_cut_list(text)
    if not items:
        raise ContsupError("--units names no unit boundary")
    units = from_named(items, unit_names) if isinstance(items[0], tuple) else list(items)  # type: ignore[arg-type]
    return validate_cuts(units, len(unit_names))  # type: ignore[arg-type]


@torch.no_grad()
def walk_boundaries(
    net: LocalNetwork, x: torch.Tensor, units: Sequence[int], batch_size: int = 500
) -> Iterator[CutFeatures]:
    """Yield CutFeatures after each unit in `units` (ascending) for all of `x`, the network frozen in eval mode.

    The walk keeps the whole set's activation at the current unit (and the context sources that later
    cuts still read), so each unit runs once per example and no boundary's features outlive its turn.
    """
    wanted = set(units)
    if any(u < 0 or u >= len(net.unit_names) for u in wanted):
        raise ContsupError(f"unit boundaries must lie in 0..{len(net.unit_names) - 1}, got {sorted(wanted)}")
    was_training = net.training
    net.eval()
    try:
        yield from _walk(net, x, wanted, batch_size)
    finally:
        net.train(was_training)


def _walk(net: LocalNetwork, x: torch.Tensor, wanted: set[int], batch_size: int) -> Iterator[CutFeatures]:
    """The walk of `walk_boundaries` (network already in eval mode): every module's units in turn."""
    last = max(wanted)
    h, sources, u = x, {0: x}, -1
    for k, block in enumerate(net.blocks):
        for i, unit in enumerate(block):
            u += 1
            h = _batched(unit, h, batch_size)
            hc = h
            if i == len(block) - 1 and k < net.num_modules - 1:  # a cut: module k+1's input, as the network makes it
                s = _module_input(net, k + 1, h, sources, batch_size)
                hc = s if has_context(net, k) else h  # no context: s_{k+1} is h's value, and h^c is h itself
            if u in wanted:
                yield CutFeatures(u, unit_label(net.unit_names[u]), h, hc)
            if u == last:
                return
        h = hc


def has_context(net: LocalNetwork, k: int) -> bool:
    """Whether cut k (0-based) adds any context to h_k."""
    ctx = net.context[k]
    return ctx.image is not None or len(ctx.residual) > 0


def _batched(unit: torch.nn.Module, h: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A unit applied to `h` in slices of `batch_size`."""
    return torch.cat([unit(h[i:i + batch_size]) for i in range(0, h.shape[0], batch_size)])


def _module_input(
    net: LocalNetwork, k: int, h: torch.Tensor, sources: dict[int, torch.Tensor], batch_size: int
) -> torch.Tensor:
    """Module k's input s_k for all of `h` (= h_{k-1}), the network's own `module_input` on slices like
    `_batched`'s; s_k is recorded in `sources` and the sources no later cut reads are dropped."""
    s = torch.cat([net.module_input(k, h[i:i + batch_size], {j: t[i:i + batch_size] for j, t in sources.items()})
                   for i in range(0, h.shape[0], batch_size)])
    net.keep_source(k, s, sources)
    return s
