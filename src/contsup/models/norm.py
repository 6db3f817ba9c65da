"""BatchNorm whose training backward holds one full-size map less: the same function, for memory.

PyTorch's CPU kernel of BatchNorm's backward (`native_batch_norm_backward`) allocates a temporary as large
as its input beside the input gradient, so a backward through BatchNorm briefly holds two new maps. In a
local module of one residual block the step's peak falls exactly there (docs/benchmarks.md, "ResNet-110 at
finer cuts"). `LeanBatchNorm2d` runs the forward through the same kernel (same output, same running
statistics) and computes the backward from the formula: the two per-channel sums over batch chunks (a
temporary of an eighth of the map), then the input gradient in place in its own buffer.

    dx = gamma * invstd * (g - mean(g) - (x - mean) * invstd^2 * mean(g * (x - mean)))

The gradients equal the kernel's up to rounding (tests/models/test_norm.py), not bit for bit, so it is a
setting (`LocalConfig.lean_norm`, off by default); evaluation and eval-mode BatchNorm run as before.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

CHUNKS = 8  # the sums' temporaries are a 1/CHUNKS slice of the map


def count_batch(bn: nn.BatchNorm2d) -> float:
    """Count one training batch and return the running-average factor, as nn.BatchNorm2d.forward does."""
    bn.num_batches_tracked.add_(1)
    return bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)


def batch_norm_backward(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
                        invstd: torch.Tensor, needs: tuple[bool, ...]) -> tuple[torch.Tensor | None, ...]:
    """Gradients (input, weight, bias) of training-mode BatchNorm, with one full-size allocation at most."""
    shape = [1, -1] + [1] * (x.dim() - 2)  # a per-channel vector broadcast over the map
    dims = [0, *range(2, x.dim())]
    n = x.numel() // x.shape[1]
    mu = mean.view(shape)
    dot = torch.zeros_like(mean)  # sum over the batch of g * (x - mean), per channel
    size = math.ceil(x.shape[0] / CHUNKS)
    for xc, gc in zip(x.split(size), g.split(size), strict=True):
        dot += (xc - mu).mul_(gc).sum(dims)
    sum_g = g.sum(dims)
    dx = None
    if needs[0]:
        scale = invstd if weight is None else invstd * weight
        dx = torch.sub(x, mu)  # the gradient's own buffer, in x's memory format
        dx.mul_((dot * invstd * invstd / -n).view(shape)).add_(g).sub_((sum_g / n).view(shape))
        dx.mul_(scale.view(shape))
    return dx, dot * invstd if needs[1] else None, sum_g if needs[2] else None


class _LeanBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm: the kernel's forward, `batch_norm_backward` for the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None, factor: float,
                eps: float) -> torch.Tensor:
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, factor, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        return *batch_norm_backward(g, x, weight, mean, invstd, ctx.needs_input_grad[:3]), None, None, None, None


def lean_batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                    running: tuple[torch.Tensor, torch.Tensor] | None = None, factor: float = 0.0) -> torch.Tensor:
    """F.batch_norm in training mode (batch statistics; running buffers updated by `factor` when given)."""
    mean, var = running if running is not None else (None, None)
    return _LeanBatchNorm.apply(x, weight, bias, mean, var, factor, eps)


class LeanBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training backward holds one map less (module docstring); same state_dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batch statistics in training (the lean backward), running statistics otherwise (nn.BatchNorm2d)."""
        if not self.training and self.track_running_stats:
            return super().forward(x)
        self._check_input_dim(x)
        factor = count_batch(self) if self.track_running_stats else 0.0
        running = (self.running_mean, self.running_var) if self.track_running_stats else None
        return lean_batch_norm(x, self.weight, self.bias, self.eps, running, factor)


def make_lean(module: nn.Module) -> int:
    """Turn every plain nn.BatchNorm2d in `module` into a LeanBatchNorm2d, in place; returns how many."""
    plain = [m for m in module.modules() if type(m) is nn.BatchNorm2d]
    for m in plain:
        m.__class__ = LeanBatchNorm2d  # the same object: parameters, buffers and hooks stay as they are
    return len(plain)
