"""The local-learning step: per batch, each module learns from its own objective; nothing crosses a cut.

For module k in turn: cut k-1 supplies context to module k-1's detached output, module k runs forward,
its objective gives the loss, and the loss is back-propagated at once (freeing module k's activations).
Cut k-1's encoders sit in front of module k, so module k's loss trains them. The optimizer steps all
modules together afterwards. A pipeline stage runs the same `modules_step` for the modules it owns.

Under HPFF's cascade (`LocalNetwork.cascade`, docs/heads.md) one gradient crosses each cut: after module
k's own backward, module k runs again on module k-1's output recomputed from module k-1's detached input,
and that second loss trains module k-1's units as well as module k.

Autocast (bf16) is entered in one place, around each module's forward (`module_step`); the backward runs
outside it and every loss is computed in float32 (`contsup.method.losses.float32_loss`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from contsup.errors import ContsupError
from contsup.method.network import LocalNetwork, Sources
from contsup.method.objective import Targets


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """The forward passes' autocast: bf16 on `device` when asked for, else a context that does nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def module_step(net: LocalNetwork, k: int, s: torch.Tensor, targets: Targets,
                amp: contextlib.AbstractContextManager,
                second: Callable[[], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Module k's local step from its input s_k (`LocalNetwork.module_input`): forward, loss, backward.

    With HPFF's cascade, `second` gives module k's second input (`LocalNetwork.second_input`; None at module
    0): the own loss is weighted wx, then the second path runs, weighted wy, and is back-propagated in turn.
    Returns (module k's detached output, or the logits for the last module; the detached loss).
    """
    trains = net.objectives[k].trains
    with amp, contextlib.nullcontext() if trains else torch.no_grad():
        out = net.blocks[k](s)
        loss, prediction = net.objectives[k](out, targets)
    result = (prediction if k == net.num_modules - 1 else out).detach()
    del out, prediction  # the last module's output lives through backward only if autograd saved it
    if net.cascade is None:
        loss.backward()
        return result, loss.detach()
    wx, wy = net.cascade
    loss = wx * loss
    if trains:  # module 0 under the cascade has no head of its own: it ran without a graph
        loss.backward()
    if second is not None:
        with amp:
            z_loss = wy * net.objectives[k].second_path(net.blocks[k](second()), targets)
        z_loss.backward()
        loss = loss.detach() + z_loss.detach()
    return result, loss.detach()


def modules_step(net: LocalNetwork, modules: range, h: torch.Tensor, sources: Sources, targets: Targets,
                 amp: contextlib.AbstractContextManager | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The local steps of a run of modules (all of them, or a pipeline stage's), one after the other.

    `h` and `sources` are what enters the first module (x and {0: x} for module 0; module `modules.start - 1`'s
    raw output and the sources crossing the cut otherwise); `sources` is updated in place. Returns (the last
    module's detached output, or the logits; the modules' losses stacked, detached, on the device).
    """
    amp = amp or contextlib.nullcontext()
    if net.cascade is not None and modules.start > 0:
        raise ContsupError("HPFF's cascade runs module k - 1 again in module k's step: run every module in one "
                           "process (no pipeline stages)")
    losses = []
    s_prev = None  # under the cascade: module k-1's input, for module k's second path
    for k in modules:
        with amp:
            second = net.second_input(k, s_prev, sources) if s_prev is not None else None
            s = net.module_input(k, h, sources)
        del h  # module k-1's raw output: s_k holds what module k reads, so it is freed before module k's step
        if net.cascade is not None:
            s_prev = s.detach()
        h, loss = module_step(net, k, s, targets, amp, second)
        losses.append(loss)
    return h, torch.stack(losses)


@dataclass
class StepOutput:
    """What one local step measured: each module's loss and the final module's logits (detached, on the device).

    The losses stay on the device, so that a training loop reads them once per log interval, not every step.
    """

    losses: torch.Tensor  # (K,)
    logits: torch.Tensor


def local_step(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor, pixels: torch.Tensor | None = None,
               amp: contextlib.AbstractContextManager | None = None) -> StepOutput:
    """Forward and backward every module on one batch (gradients accumulate; no optimizer step).

    `pixels` is the un-normalised image in [0, 1], needed with the reconstruction term.
    """
    logits, losses = modules_step(net, range(net.num_modules), x, {0: x}, Targets(y, pixels), amp)
    return StepOutput(losses, logits)


def clip_module_grads(net: LocalNetwork, modules: range, max_norm: float) -> None:
    """Clip each module's gradient norm to `max_norm`, module by module (their losses are independent).

    A module's parameters are `LocalNetwork.module_parameters(k)`; with K = 1 this is ordinary clipping of the
    whole network's gradient. The norms stay on the device (no host synchronisation).
    """
    for k in modules:
        torch.nn.utils.clip_grad_norm_(net.module_parameters(k), max_norm)  # fused (foreach) on CPU and CUDA
