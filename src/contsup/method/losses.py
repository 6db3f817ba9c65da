"""Local losses: what a local head's output is trained with. Add one with `@LOSSES.register(name)`."""

from __future__ import annotations

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


# name -> (number of classes, hidden width W of the heads) -> LocalLoss
LOSSES: Registry[Callable[[int, int], LocalLoss]] = Registry("loss")


@LOSSES.register("softmax")
def softmax(num_classes: int, width: int) -> LocalLoss:
    """Cross entropy over the classes: the head outputs one logit per class."""
    return LocalLoss(num_classes, lambda out, y: F.cross_entropy(out.float(), y))


@LOSSES.register("contrast")
def contrast(num_classes: int, width: int) -> LocalLoss:
    """Supervised contrastive loss on a W-dim embedding (temperature 0.07)."""
    return LocalLoss(width, supcon_loss)


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) with positives = same label in the batch."""
    z = F.normalize(features.float(), dim=1)
    logits = z @ z.T / temperature
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    has_pos = count > 0
    if not has_pos.any():
        return features.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
    return -(pos_log_prob[has_pos] / count[has_pos]).mean()
