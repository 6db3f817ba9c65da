"""One pipeline stage: a contiguous run of modules, their parameters, and the per-module local step.

A stage runs `contsup.method.step.modules_step` over its own modules, the function the single-process
`local_step` runs over all of them, along the same `LocalNetwork.walk`: module k supplies context to
module k-1's (detached) output with its own encoders (cut k-1 sits in front of module k, so module k's
loss trains them), runs its block and its local loss, and back-propagates at once. So a chain of stages
computes exactly what `local_step` does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from contsup.method.network import LocalNetwork
from contsup.method.step import module_step
from contsup.models.chain import Shape


def dims(shape: Shape) -> tuple[int, int, int]:
    """(channels, height, width) of a feature-map shape."""
    return (shape.channels, shape.height, shape.width)


def boundary_sources(net: LocalNetwork, k: int) -> list[int]:
    """Module inputs s_j that must cross the boundary in front of module k (cuts k-1 and later read them)."""
    return [j for j in range(k) if net.last_use[j] >= k - 1]


def module_parts(net: LocalNetwork, k: int) -> dict[str, nn.Module]:
    """Every sub-module that module k's loss trains, by its state_dict prefix."""
    parts: dict[str, nn.Module] = {f"blocks.{k}.": net.blocks[k]}
    if k > 0:
        parts[f"context.{k - 1}."] = net.context[k - 1]
    if k < net.num_modules - 1:
        parts[f"heads.{k}."] = net.heads[k]
        if len(net.decoders):
            parts[f"decoders.{k}."] = net.decoders[k]
    else:
        parts["classifier."] = net.classifier
    return parts


@dataclass
class Stage:
    """The modules one rank owns, as one nn.Module (for the optimizer) and as state_dict prefixes."""

    net: LocalNetwork
    modules: range
    parts: dict[str, nn.Module] = field(init=False)

    def __post_init__(self) -> None:
        self.parts = {p: m for k in self.modules for p, m in module_parts(self.net, k).items()}

    def module(self) -> nn.ModuleList:
        """The owned sub-modules together (their parameters are this stage's to optimise)."""
        return nn.ModuleList(self.parts.values())

    def owns(self, key: str) -> bool:
        """Whether a key of the network's state_dict belongs to this stage."""
        return any(key.startswith(p) for p in self.parts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The owned entries of the network's state_dict (weights and BN buffers), on the CPU."""
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items() if self.owns(k)}


def measure_costs(
    net: LocalNetwork, x: torch.Tensor, y: torch.Tensor, pixels: torch.Tensor | None, repeats: int = 2
) -> list[float]:
    """Seconds of each module's local step (context supply included) on one batch, best of `repeats`
    after a warm-up.

    Runs on the given network and leaves its gradients set and BN statistics moved: pass a copy.
    """
    best = [float("inf")] * net.num_modules
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    net.train()
    for _ in range(repeats + 1):
        sync()
        mark = time.perf_counter()

        def timed(k: int, h_in: torch.Tensor) -> torch.Tensor:
            nonlocal mark
            h, _ = module_step(net, k, h_in, y, pixels)
            sync()
            now = time.perf_counter()
            best[k] = min(best[k], now - mark)
            mark = now
            return h

        net.run(timed, x, {0: x})
    return best


def param_index(net: nn.Module, params: Sequence[nn.Parameter]) -> list[int]:
    """Position of each given parameter in `net.parameters()` (the single-process optimizer's order)."""
    where = {id(p): i for i, p in enumerate(net.parameters())}
    return [where[id(p)] for p in params]
