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


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm1d or BatchNorm2d whose training statistics span every replica of a process group."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, group: dist.ProcessGroup) -> None:
        like = next(iter(bn.state_dict().values()))
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=like.device, dtype=like.dtype)
        self.load_state_dict(bn.state_dict())
        self.train(bn.training)
        self.group = group
        self.dims = 2 if isinstance(bn, nn.BatchNorm1d) else 4  # the input's dims: (N, C) or (N, C, H, W)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() != self.dims:
            raise ValueError(f"expected {self.dims}D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with full-batch statistics in training, with the running buffers in eval."""
        self._check_input_dim(x)
        if not self.training:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]  # every dimension but the channels
        per_channel = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count, group=self.group)
        n = float(count.item())  # host sync: the full batch's size sets the variance's correction
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = all_reduce_sum(xf.sum(dims), self.group) / n
        centred = xf - mean.view(per_channel)
        var = all_reduce_sum(centred.square().sum(dims), self.group) / n
        out = centred * torch.rsqrt(var + self.eps).view(per_channel)
        if self.affine:
            out = out * self.weight.view(per_channel) + self.bias.view(per_channel)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        return out.to(x.dtype)


SYNCED = (nn.BatchNorm1d, nn.BatchNorm2d)  # the BatchNorm layers contsup's backbones and heads hold


def convert_sync_batchnorm(module: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """Replace every BatchNorm1d and BatchNorm2d inside `module` by a SyncBatchNorm over `group` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, SYNCED) and not isinstance(child, SyncBatchNorm):
            setattr(module, name, SyncBatchNorm(child, group))
        else:
            convert_sync_batchnorm(child, group)
    return module


def sync_batchnorm(part: nn.Module, group: dist.ProcessGroup, backend: str) -> None:
    """Synchronise every BatchNorm inside `part` over a stage's replicas (in place): torch's SyncBatchNorm
    with NCCL (it runs on CUDA only), the own one on gloo. `part` is never a BatchNorm layer itself."""
    if backend == "nccl":
        synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(part, group)
        assert synced is part, "a stage's part is never a BatchNorm layer itself"
    else:
        convert_sync_batchnorm(part, group)
