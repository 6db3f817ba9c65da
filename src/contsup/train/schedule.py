"""Learning-rate schedules: linear warm-up into a cosine decay, set per step (default) or per epoch (the paper's)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from contsup.errors import ContsupError

SCHEDULES = ["step", "epoch"]


def cosine_lr(epoch: float, epochs: float, base_lr: float) -> float:
    """Cosine decay from base_lr at epoch 0 towards 0 at `epochs` (fractional epochs allowed)."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / epochs))


def lr_at(epoch: float, epochs: float, base_lr: float, warmup_epochs: float, warmup_start: float = 0.01) -> float:
    """Learning rate at `epoch`: linear warm-up from `warmup_start` to the cosine curve, then cosine."""
    if epoch < warmup_epochs:
        target = cosine_lr(warmup_epochs, epochs, base_lr)
        return warmup_start + (target - warmup_start) * epoch / warmup_epochs
    return cosine_lr(epoch, epochs, base_lr)


def default_warmup(epochs: int) -> int:
    """The paper's 10 warm-up epochs of 160, scaled to shorter runs (rounded down): the per-epoch default."""
    return epochs * 10 // 160


def default_step_warmup(epochs: int) -> float:
    """The per-step default, in epochs: the paper's 10 of 160, but at least a quarter of a run shorter than 4 epochs."""
    return max(epochs / 16, min(1.0, epochs / 4))


@dataclass(frozen=True)
class Schedule:
    """The learning rate at every step of a run; `lr(epoch, batch)` is what the training loops call."""

    kind: str  # step | epoch
    base_lr: float
    epochs: int
    steps_per_epoch: int
    warmup: float  # in epochs (per-step: fractions allowed)
    warmup_start: float = 0.01

    def lr(self, epoch: int, batch: int) -> float:
        """Rate for batch `batch` (0-based) of epoch `epoch` (0-based)."""
        if self.kind == "epoch":
            return lr_at(epoch, self.epochs, self.base_lr, self.warmup, self.warmup_start)
        return lr_at(epoch + batch / self.steps_per_epoch, self.epochs, self.base_lr, self.warmup, self.warmup_start)

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, batch: int) -> float:
        """Set every parameter group's rate for this step (times the group's `lr_scale`, if any); returns it."""
        lr = self.lr(epoch, batch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    @property
    def warmup_steps(self) -> int:
        """Number of steps before the rate reaches the cosine curve."""
        return math.ceil(self.warmup * self.steps_per_epoch - 1e-9)


def make_schedule(kind: str, base_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float | None = None,
                  warmup_steps: int | None = None, warmup_start: float = 0.01) -> Schedule:
    """A checked Schedule; the warm-up is given in epochs or in steps (not both), None taking the default."""
    if kind not in SCHEDULES:
        raise ContsupError(f"unknown schedule {kind!r}; choose from {', '.join(SCHEDULES)}")
    if warmup_epochs is not None and warmup_steps is not None:
        raise ContsupError("give the warm-up in epochs or in steps, not both")
    if (warmup_epochs or 0) < 0 or (warmup_steps or 0) < 0:
        raise ContsupError("the warm-up cannot be negative")
    steps_per_epoch = max(steps_per_epoch, 1)
    if kind == "epoch":
        if warmup_steps is not None or (warmup_epochs is not None and warmup_epochs != int(warmup_epochs)):
            raise ContsupError("the per-epoch schedule takes a whole number of warm-up epochs")
        warmup = float(default_warmup(epochs) if warmup_epochs is None else warmup_epochs)
    elif warmup_steps is not None:
        warmup = warmup_steps / steps_per_epoch
    else:
        warmup = default_step_warmup(epochs) if warmup_epochs is None else float(warmup_epochs)
    return Schedule(kind, base_lr, epochs, steps_per_epoch, warmup, warmup_start)
