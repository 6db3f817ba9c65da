"""Memory-lean context encoders: the same function, with only the encoder's input kept for backward.

A context encoder is conv-BN-ReLU layers and an adaptive average pool to the cut's size (after the
layers, or before them in the pooled image-encoder variant). Run by autograd, it keeps every
intermediate at the source's resolution alive until its module's backward. The lean version runs the
forward without autograd (BatchNorm with batch statistics, running buffers updated once) and keeps
only its input, already alive as a context source; its backward recomputes the layers with autograd
and back-propagates through them at once, after the module's own activations are freed.

The last layer runs in chunks of its output channels, so that no full-resolution intermediate is
larger than `max_elements` per sample. BatchNorm normalises each channel over the whole batch, so a
channel chunk has exactly the whole-batch statistics. In backward the earlier layers run twice: without
autograd for the last layer's input, then, once the chunks are back-propagated, with it for their own
gradients, so that their saved tensors and the chunks' are never alive together (with one unit a module,
the image encoder's backward otherwise sets the step's peak: docs/benchmarks.md).

Local heads are not made lean: a head's backward runs, and frees its saved activations, before the
backward of its module's units, which is where a local step's memory peaks (docs/method.md, the engine).
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from contsup.models.norm import LeanBatchNorm2d, count_batch, lean_batch_norm


class ConvStack(Protocol):
    """What the lean forward reads of an encoder (`conv.ConvEncoder`): its layers, its pool and where it runs."""

    pool_first: bool  # the pool runs before the layers
    max_elements: int  # per-sample bound on a full-resolution intermediate (0: none)

    def layers(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        """The (conv, BN) pairs of the conv-BN-ReLU layers, in order."""
        ...

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The average pool to the cut's size."""
        ...


def _conv_bn_relu(
    h: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, params: list[torch.Tensor], chunk: slice,
    factor: float | None,
) -> torch.Tensor:
    """One layer on output channels `chunk`; params = conv weight, conv bias, BN weight, BN bias.

    In training, BN normalises with the batch statistics and updates its running buffers only when
    `factor` is given (the forward pass), never in the recomputation.
    """
    w, b, gamma, beta = params
    a = F.conv2d(h, w[chunk], b[chunk], conv.stride, conv.padding, conv.dilation, conv.groups)
    if bn.training and factor is None and type(bn) is LeanBatchNorm2d:
        y = lean_batch_norm(a, gamma[chunk], beta[chunk], bn.eps)
    elif bn.training and factor is None:
        y = F.batch_norm(a, None, None, gamma[chunk], beta[chunk], True, 0.0, bn.eps)
    else:
        y = F.batch_norm(a, bn.running_mean[chunk], bn.running_var[chunk], gamma[chunk], beta[chunk],
                         bn.training, factor or 0.0, bn.eps)
    return F.relu(y, inplace=True)


def _chunks(enc: ConvStack, h: torch.Tensor) -> list[slice]:
    """Output-channel chunks of the last layer: at most `max_elements` per sample at h's resolution."""
    channels = enc.layers()[-1][0].out_channels
    step = max(1, enc.max_elements // (h.shape[-2] * h.shape[-1])) if enc.max_elements else channels
    return [slice(i, min(i + step, channels)) for i in range(0, channels, step)]


def _front(enc: ConvStack, x: torch.Tensor, params: list[torch.Tensor], factors: list | None) -> torch.Tensor:
    """The encoder up to the last layer's input: the pool first (pooled variant) and the earlier layers."""
    h = enc.pool(x) if enc.pool_first else x
    for i, (conv, bn) in enumerate(enc.layers()[:-1]):
        h = _conv_bn_relu(h, conv, bn, params[4 * i:4 * i + 4], slice(None), factors[i] if factors else None)
    return h


def _last(enc: ConvStack, h: torch.Tensor, params: list[torch.Tensor], chunk: slice,
          factor: float | None) -> torch.Tensor:
    """The last layer on output channels `chunk`, then the pool (unless it came first)."""
    conv, bn = enc.layers()[-1]
    out = _conv_bn_relu(h, conv, bn, params[-4:], chunk, factor)
    return out if enc.pool_first else enc.pool(out)


class _LeanEncode(torch.autograd.Function):
    """Forward without a graph; backward recomputes the encoder from its input and back-propagates it."""

    @staticmethod
    def forward(ctx: Any, enc: ConvStack, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.enc = enc
        device = x.device.type  # the forward's autocast state, where the device has autocast
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device)) \
            if torch.amp.is_autocast_available(device) else None
        ctx.save_for_backward(x, *params)
        factors = [count_batch(bn) if bn.training else None for _, bn in enc.layers()]
        h = _front(enc, x, list(params), factors)
        outs = [_last(enc, h, list(params), c, factors[-1]) for c in _chunks(enc, h)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        enc = ctx.enc
        amp = torch.autocast(*ctx.autocast) if ctx.autocast is not None else contextlib.nullcontext()
        with amp:  # the forward's autocast state
            xs = x.detach().requires_grad_(ctx.needs_input_grad[1])
            ps = [p.detach().requires_grad_(need) for p, need in zip(params, ctx.needs_input_grad[2:], strict=True)]
            front = (len(enc.layers()) > 1 or enc.pool_first) and (xs.requires_grad or any(
                p.requires_grad for p in ps[:-4]))  # earlier layers (or the pool) that a gradient goes through
            with torch.no_grad():  # the last layer's input, without the earlier layers' saved tensors
                mid = _front(enc, xs, ps, None).requires_grad_() if front else _front(enc, xs, ps, None)
            with torch.enable_grad():
                for chunk in _chunks(enc, mid):
                    torch.autograd.backward(_last(enc, mid, ps, chunk, None), grad[:, chunk])
                if front:  # then the earlier layers, recomputed now that the chunks' tensors are freed
                    grad_mid, mid = mid.grad, None
                    torch.autograd.backward(_front(enc, xs, ps, None), grad_mid)
        return None, xs.grad, *(p.grad for p in ps)


def lean_applies(enc: ConvStack) -> bool:
    """Whether every BN of the encoder is a plain or lean BatchNorm2d (a synchronised BN runs straightforwardly)."""
    return all(type(bn) in (nn.BatchNorm2d, LeanBatchNorm2d) for _, bn in enc.layers())


def lean_encode(enc: ConvStack, x: torch.Tensor) -> torch.Tensor:
    """The encoder's output on x, holding only x for backward (module docstring)."""
    params = [t for conv, bn in enc.layers() for t in (conv.weight, conv.bias, bn.weight, bn.bias)]
    return _LeanEncode.apply(enc, x, *params)
