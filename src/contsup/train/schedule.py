"""Learning-rate schedule of the paper: linear warm-up from 0.01 into a cosine decay, set per epoch."""

from __future__ import annotations

import math


def cosine_lr(epoch: int, epochs: int, base_lr: float) -> float:
    """Cosine decay from base_lr at epoch 0 towards 0 at `epochs`."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / epochs))


def lr_at(epoch: int, epochs: int, base_lr: float, warmup_epochs: int, warmup_start: float = 0.01) -> float:
    """Learning rate for `epoch` (0-based): warm-up from `warmup_start` to the cosine curve, then cosine."""
    if epoch < warmup_epochs:
        target = cosine_lr(warmup_epochs, epochs, base_lr)
        return warmup_start + (target - warmup_start) * epoch / warmup_epochs
    return cosine_lr(epoch, epochs, base_lr)


def default_warmup(epochs: int) -> int:
    """The paper's 10 warm-up epochs of 160, scaled to shorter runs (rounded down)."""
    return epochs * 10 // 160
