"""The local-learning step: per batch, each module learns from its own loss; nothing crosses a cut.

Per module k: forward its input, backward its local loss at once (freeing its activations), then
detach its output and supply it with context for module k+1. Context encoders at cut k sit in front
of module k+1, so module k+1's loss trains them. The optimizer steps all modules together afterwards.
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


def local_step(
    net: LocalNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    pixels: torch.Tensor | None = None,
    autocast: torch.autocast | None = None,
) -> StepOutput:
    """Forward and backward every module on one batch (gradients accumulate; no optimizer step)."""
    amp = autocast if autocast is not None else contextlib.nullcontext()
    last = net.num_modules - 1
    sources: dict[int, torch.Tensor] = {0: x}
    losses: list[torch.Tensor] = []
    h_in = x
    for k, block in enumerate(net.blocks):
        with amp:
            h = block(h_in)
            if k == last:
                logits = net.classifier(h)
                loss = F.cross_entropy(logits.float(), y)
            else:
                loss = local_loss(net, k, h, y, pixels)
        loss.backward()
        losses.append(loss.detach())
        if k == last:
            return StepOutput(torch.stack(losses).tolist(), logits.detach())
        with amp:
            h_in = net.supply(k, h, sources)
        del h
        sources[k + 1] = h_in.detach()
        for j in [j for j in sources if net.last_use[j] <= k + 1]:
            del sources[j]  # no later cut reads s_j
    raise AssertionError("unreachable")
