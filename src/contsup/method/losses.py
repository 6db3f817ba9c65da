"""Local losses: what a local head's output is trained with. Add one with `@LOSSES.register(name)`.

Every loss is computed in float32 outside autocast (`float32_loss`), whatever precision the head ran in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contsup.registry import Registry


@dataclass(frozen=True)
class LocalLoss:
    """A local loss for a head: the head's output size, and the loss of (head output, labels)."""

    out_dim: int
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def float32_loss(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], out: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
    """fn(out, target) in float32 with autocast off (an enclosing bf16 autocast would undo a plain `.float()`)."""
    device = out.device.type
    with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else contextlib.nullcontext():
        return fn(out.float(), target.float() if target.is_floating_point() else target)


# name -> (number of classes, hidden width W of the heads) -> LocalLoss
LOSSES: Registry[Callable[[int, int], LocalLoss]] = Registry("loss")


@LOSSES.register("softmax")
def softmax(num_classes: int, width: int) -> LocalLoss:
    """Cross entropy over the classes: the head outputs one logit per class."""
    return LocalLoss(num_classes, F.cross_entropy)


@LOSSES.register("contrast")
def contrast(num_classes: int, width: int) -> LocalLoss:
    """Supervised contrastive loss on a W-dim embedding (temperature 0.07)."""
    return LocalLoss(width, supcon_loss)


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) with positives = same label in the batch.

    Anchors without a positive are left out; a batch with none gives 0 (with a gradient of zeros). No
    value is read on the host, so the loss never waits for the device.
    """
    z = F.normalize(features, dim=1)
    logits = z @ z.T / temperature
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    has_pos = count > 0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
    per_anchor = torch.where(has_pos, pos_log_prob / count.clamp_min(1), torch.zeros_like(pos_log_prob))
    return -per_anchor.sum() / has_pos.sum().clamp_min(1)
