"""The lower bound of a local step's memory for a cut table: what no implementation of it goes below.

A step must at some point hold the activations one module saves for backward, with its local head's (or
the classifier's and its loss's) on top, and it holds the whole network's parameters, the gradients of the
trained ones (all of them at once before the optimizer step), their optimizer state (SGD with momentum: one
buffer per parameter) and the buffers (BatchNorm running statistics) throughout. Frozen parameters (MAN's
EMA copies, which follow the next unit by momentum) are held as weights alone: no gradient, no state. The
bound is the largest module's saved bytes plus all of that.

A module's saved bytes, counted with saved-tensor hooks on a batch of two (per sample, scaled to the batch):
its units run on a fresh input (so its input s_k counts when its first unit saves it, as a convolution
does), its head at its end from the balanced cut rule's memory model (contsup.method.cuts.balance.memory_model,
so bound and cuts share that measurement), and for k > 0 cut k-1's encoders in front of it: what they save,
the earlier module inputs s_j they read among it (R1's s_{k-1}, which a lean encoder keeps for its weight
gradient), and the sources the network holds for later cuts. The batch x is left out there (it lives before
the step); module 0 counts it where unit 0 saves it, as the memory model does. Under HPFF's cascade the step
holds two modules at a time: module k's second path saves module k-1's and module k's activations and its
second objective's (`cascade_window`, on the memory model's chain count).

`contsup profile` reports a step's peak above what lived before it (`peak_bytes`, gradients included)
and the state between steps (`state_bytes`: parameters, buffers, optimizer state): their sum is what
compares with `LowerBound.total`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contsup.method.cuts.balance import BATCH, memory_model, saved_per_sample
from contsup.method.network import LocalNetwork
from contsup.method.objective import Objective, Targets


@dataclass(frozen=True)
class LowerBound:
    """The ideal step peak in bytes, by part; `module` is the module whose activations set it."""

    module: int
    activations: int  # the largest module's saved bytes (`module_bytes`) at the batch size
    params: int  # every parameter's weights, frozen ones included
    grads: int  # the trained parameters' gradients
    optimizer: int
    buffers: int

    @property
    def total(self) -> int:
        """Everything the step holds at its ideal peak."""
        return self.activations + self.params + self.grads + self.optimizer + self.buffers


def largest_module(sizes: Sequence[float]) -> tuple[int, float]:
    """(module, its saved bytes per sample) for the module that saves the most."""
    k = max(range(len(sizes)), key=sizes.__getitem__)
    return k, sizes[k]


def module_bytes(net: LocalNetwork, end_bytes: Sequence[float]) -> list[float]:
    """Each module's saved bytes per sample (module docstring): its units on a fresh input, its head, its encoders.

    Runs `net`'s parts in training mode on a batch of two (their BatchNorm buffers move: give it a copy).
    """
    sizes = []
    for k, block in enumerate(net.blocks):
        units = nn.Sequential(*block).train()  # plain: the bound is the step without recomputation
        first = sum(len(b) for b in net.blocks[:k])
        s = torch.randn(net.source_shapes[k].batch(BATCH))
        size = saved_per_sample(net, lambda u=units, s=s: u(s))  # s_k counts where a unit saves it (x at k = 0 too)
        if k > 0:
            ctx = net.context[k - 1].train()
            h, x = torch.randn(s.shape), torch.randn(net.source_shapes[0].batch(BATCH))
            sources = {j: torch.randn(net.source_shapes[j].batch(BATCH)) for j in range(1, k)}
            sources[0] = x
            held = [t for j, t in sources.items() if j > 0 and net.last_use[j] >= k]  # in the network's dict
            size += sum(t.numel() * t.element_size() for t in held) / BATCH
            size += saved_per_sample(net, lambda c=ctx, h=h, src=sources: c(h, src), h, x, *held)
        sizes.append(size + end_bytes[first + len(block) - 1])
    return sizes


class SecondPath(Objective):
    """A cascade objective's second path as an objective, for the memory model to count."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, h: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, None]:
        """(the second path's loss, no prediction)."""
        return self.objective.second_path(h, targets), None


def cascade_window(unit_bytes: Sequence[float], second_bytes: Sequence[float],
                   cuts: Sequence[int]) -> tuple[int, float]:
    """(module k, its window's saved bytes per sample): the k >= 1 whose second path saves the most, module
    k-1's and module k's units and the second objective at module k's last unit (a module's input is charged
    to the unit that first saves it, as the chain does)."""
    bounds = [0, *(c + 1 for c in cuts), len(unit_bytes)]
    sizes = {k: sum(unit_bytes[bounds[k - 1]:bounds[k + 1]]) + second_bytes[bounds[k + 1] - 1]
             for k in range(1, len(bounds) - 1)}
    k = max(sizes, key=sizes.__getitem__)
    return k, sizes[k]


def lower_bound(net: LocalNetwork, batch_size: int, optimizer_buffers: int = 1) -> LowerBound:
    """The network's lower bound at `batch_size` with `optimizer_buffers` state tensors per parameter."""
    net = copy.deepcopy(net).cpu()  # the model runs copies of its parts on a CPU batch of two
    units = [unit for block in net.blocks for unit in block]
    cut_of = {c: k for k, c in enumerate(net.cuts)}

    def objective(j: int) -> Objective:  # the network's own objective at a cut (a copy: the model runs it)
        return copy.deepcopy(net.objectives[cut_of[j]])

    with torch.random.fork_rng(devices=[]):  # the model draws random batches and new objectives: not from the caller's
        unit_bytes, end_bytes, _ = memory_model(units, net.classifier, torch.zeros(net.source_shapes[0].batch(1)),
                                                net.unit_shapes, net.mode, objective, net.config.image_encoder,
                                                net.config.lean_context, ends=set(cut_of))
        k, per_sample = largest_module(module_bytes(net, end_bytes))
    if net.cascade is not None:
        with torch.random.fork_rng(devices=[]):
            _, second_bytes, _ = memory_model(
                units, net.classifier, torch.zeros(net.source_shapes[0].batch(1)), net.unit_shapes, net.mode,
                lambda j: SecondPath(objective(j)), net.config.image_encoder, net.config.lean_context,
                ends=set(net.cuts[1:]))
        k2, window = cascade_window(unit_bytes, second_bytes, net.cuts)
        k, per_sample = (k2, window) if window > per_sample else (k, per_sample)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    trained = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    return LowerBound(k, round(per_sample * batch_size), params, trained, optimizer_buffers * trained, buffers)
