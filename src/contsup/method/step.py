"""The local-learning step: per batch, each module learns from its own loss; nothing crosses a cut.

Per module k along `LocalNetwork.walk`: module k-1's detached output is supplied with context, module k
runs forward and backwards its local loss at once (freeing its activations). Context encoders at cut k
sit in front of module k+1, so module k+1's loss trains them. The optimizer steps all modules together
afterwards. A pipeline stage runs the same `modules_step` for the modules it owns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contsup.method.network import LocalNetwork, Sources


@dataclass
class StepOutput:
    """What one local step measured: each module's loss and the final module's logits (detached, on the device).

    The losses stay on the device, so that a training loop reads them once per log interval, not every step.
    """

    losses: torch.Tensor  # (K,)
    logits: torch.Tensor


def local_loss(
    net: LocalNetwork, k: int, h: torch.Tensor, y: torch.Tensor, pixels: torch.Tensor | None
) -> torch.Tensor:
    """Module k's local loss: head task term, plus the weighted reconstruction term when enabled."""
    task = net.objective.fn(net.heads[k](h), y)
    if not len(net.decoders):
        return task
    if pixels is None:
        raise ValueError("reconstruction needs the un-normalised image (pixels in [0, 1])")
    lambda_x, lambda_y = net.config.recon.at(k, len(net.heads))  # type: ignore[union-attr]
    return lambda_x * net.decoders[k].loss(h, pixels) + lambda_y * task


def module_step(
    net: LocalNetwork,
    k: int,
    h_in: torch.Tensor,
    y: torch.Tensor,
    pixels: torch.Tensor | None = None,
    autocast: torch.autocast | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Module k's local step on its input (already supplied with context): forward, local loss, backward.

    Returns (module k's detached output, or the logits for the last module; the detached loss).
    """
    amp = autocast if autocast is not None else contextlib.nullcontext()
    with amp:
        h = net.blocks[k](h_in)
        if k == net.num_modules - 1:
            h = net.classifier(h)
            loss = F.cross_entropy(h.float(), y)
        else:
            loss = local_loss(net, k, h, y, pixels)
    loss.backward()
    return h.detach(), loss.detach()


def modules_step(
    net: LocalNetwork,
    modules: range,
    h: torch.Tensor,
    sources: Sources,
    y: torch.Tensor,
    pixels: torch.Tensor | None = None,
    autocast: torch.autocast | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The local steps of a run of modules (all of them, or a pipeline stage's) along the module walk.

    `h` and `sources` are what enters the first module (x and {0: x} for module 0); `sources` is updated
    in place. Returns (the last module's detached output, its losses stacked, detached).
    """
    losses: list[torch.Tensor] = []

    def step(k: int, h_in: torch.Tensor) -> torch.Tensor:
        out, loss = module_step(net, k, h_in, y, pixels, autocast)
        losses.append(loss)
        return out

    h = net.run(step, h, sources, modules, autocast)
    return h, torch.stack(losses)


def local_step(
    net: LocalNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    pixels: torch.Tensor | None = None,
    autocast: torch.autocast | None = None,
) -> StepOutput:
    """Forward and backward every module on one batch (gradients accumulate; no optimizer step)."""
    logits, losses = modules_step(net, range(net.num_modules), x, {0: x}, y, pixels, autocast)
    return StepOutput(losses, logits)


def clip_module_grads(net: LocalNetwork, modules: range, max_norm: float) -> None:
    """Clip each module's gradient norm to `max_norm`, module by module (their losses are independent).

    A module's parameters are `LocalNetwork.module_parameters(k)`; with K = 1 this is ordinary clipping of the
    whole network's gradient. The norms stay on the device (no host synchronisation).
    """
    for k in modules:
        torch.nn.utils.clip_grad_norm_(net.module_parameters(k), max_norm, foreach=True)
