"""The local-learning step: per batch, each module learns from its own loss; nothing crosses a cut.

Per module k: supply module k-1's detached output with context, forward, backward the local loss at
once (freeing module k's activations). Context encoders at cut k sit in front of module k+1, so module
k+1's loss trains them. The optimizer steps all modules together afterwards. A pipeline stage runs the
same `module_step` for the modules it owns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contsup.method.heads import task_loss
from contsup.method.network import LocalNetwork


@dataclass
class StepOutput:
    """What one local step measured: each module's loss, and the final module's logits (detached)."""

    losses: list[float]
    logits: torch.Tensor


def local_loss(
    net: LocalNetwork, k: int, h: torch.Tensor, y: torch.Tensor, pixels: torch.Tensor | None
) -> torch.Tensor:
    """Module k's local loss: head task term, plus the weighted reconstruction term when enabled."""
    task = task_loss(net.heads[k](h), y, net.config.loss)
    if not len(net.decoders):
        return task
    if pixels is None:
        raise ValueError("reconstruction needs the un-normalised image (pixels in [0, 1])")
    lambda_x, lambda_y = net.config.recon.at(k, len(net.heads))  # type: ignore[union-attr]
    return lambda_x * net.decoders[k].loss(h, pixels) + lambda_y * task


def module_step(
    net: LocalNetwork,
    k: int,
    h_prev: torch.Tensor,
    sources: dict[int, torch.Tensor],
    y: torch.Tensor,
    pixels: torch.Tensor | None = None,
    autocast: torch.autocast | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Module k's local step: supply its input, forward, local loss, backward at once.

    Returns (module k's detached output, or the logits for the last module; the detached loss).
    The encoders of cut k-1 run here, in front of module k, so module k's loss trains them.
    """
    amp = autocast if autocast is not None else contextlib.nullcontext()
    with amp:
        h = net.blocks[k](net.module_input(k, h_prev, sources))
        if k == net.num_modules - 1:
            h = net.classifier(h)
            loss = F.cross_entropy(h.float(), y)
        else:
            loss = local_loss(net, k, h, y, pixels)
    loss.backward()
    return h.detach(), loss.detach()


def local_step(
    net: LocalNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    pixels: torch.Tensor | None = None,
    autocast: torch.autocast | None = None,
) -> StepOutput:
    """Forward and backward every module on one batch (gradients accumulate; no optimizer step)."""
    sources: dict[int, torch.Tensor] = {0: x}
    losses: list[torch.Tensor] = []
    h = x
    for k in range(net.num_modules):
        h, loss = module_step(net, k, h, sources, y, pixels, autocast)
        losses.append(loss)
    return StepOutput(torch.stack(losses).tolist(), h)
