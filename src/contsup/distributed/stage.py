"""One pipeline stage: a contiguous run of modules, their parameters, and the per-module local step.

A stage runs `contsup.method.local_step.modules_step` over its own modules, the function the single-process
`local_step` runs over all of them: module k supplies context to module k-1's (detached) output with its
own encoders (cut k-1 sits in front of module k, so module k's loss trains them), runs its block and its
objective, and back-propagates at once. So a chain of stages computes exactly what `local_step` does.
A stage owns what its modules own (`LocalNetwork.module_parts`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from contsup.device import synchronize
from contsup.method.local_step import autocast, module_step
from contsup.method.network import LocalNetwork
from contsup.method.objective import Targets


def boundary_sources(net: LocalNetwork, k: int) -> list[int]:
    """Module inputs s_j that must cross the boundary in front of module k (cuts k-1 and later read them)."""
    return [j for j in range(k) if net.last_use[j] >= k - 1]


@dataclass
class Stage:
    """The modules one rank owns, as one nn.Module (for the optimizer) and as state_dict prefixes."""

    net: LocalNetwork
    modules: range
    parts: dict[str, nn.Module] = field(init=False)

    def __post_init__(self) -> None:
        self.parts = {p: m for k in self.modules for p, m in self.net.module_parts(k).items()}

    def module(self) -> nn.ModuleList:
        """The owned sub-modules together (their parameters are this stage's to optimise)."""
        return nn.ModuleList(self.parts.values())

    def owns(self, key: str) -> bool:
        """Whether a key of the network's state_dict belongs to this stage."""
        return any(key.startswith(p) for p in self.parts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The owned entries of the network's state_dict (weights and BN buffers)."""
        return {k: v.detach() for k, v in self.net.state_dict().items() if self.owns(k)}


def measure_costs(net: LocalNetwork, x: torch.Tensor, targets: Targets, repeats: int = 2) -> list[float]:
    """Seconds of each module's local step (context supply included) on one batch, best of `repeats`
    after a warm-up.

    Runs on the given network and leaves its gradients set and BN statistics moved: pass a copy.
    """
    best = [float("inf")] * net.num_modules
    net.train()
    for _ in range(repeats + 1):
        h, sources = x, {0: x}
        for k in range(net.num_modules):
            synchronize(x.device)  # host sync: the clock starts when the device is idle
            mark = time.perf_counter()
            s = net.module_input(k, h, sources)
            h, _ = module_step(net, k, s, targets, autocast(x.device, False))
            synchronize(x.device)  # host sync: the time covers module k's kernels
            best[k] = min(best[k], time.perf_counter() - mark)
    return best
