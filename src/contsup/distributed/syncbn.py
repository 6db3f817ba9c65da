"""BatchNorm synchronised across data-parallel replicas, on any backend (gloo on CPU included).

torch.nn.SyncBatchNorm only runs on accelerators, so this is a small own version: in training the
batch mean and (biased) variance are those of the full batch over all replicas (two all-reduces,
mean first, then the centred squares, with gradients flowing through both), and the running buffers
move with the full batch's unbiased variance, as one BatchNorm over the whole batch would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over a process group; the gradient of a sum is the summed gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Differentiable sum of `tensor` over `group`."""
    return _AllReduceSum.apply(tensor, group)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics span every replica of a process group."""

    def __init__(self, bn: nn.BatchNorm2d, group: dist.ProcessGroup) -> None:
        like = next(iter(bn.state_dict().values()))
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=like.device, dtype=like.dtype)
        self.load_state_dict(bn.state_dict())
        self.train(bn.training)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with full-batch statistics in training, with the running buffers in eval."""
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count, group=self.group)
        n = float(count.item())
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = all_reduce_sum(xf.sum(dims), self.group) / n
        centred = xf - mean[None, :, None, None]
        var = all_reduce_sum(centred.square().sum(dims), self.group) / n
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        return out.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """Replace every nn.BatchNorm2d inside `module` by a SyncBatchNorm2d over `group` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            setattr(module, name, SyncBatchNorm2d(child, group))
        else:
            convert_sync_batchnorm(child, group)
    return module
