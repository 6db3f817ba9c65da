"""AdamW for transformers: weight decay on the weight matrices and kernels only (as timm and DeiT)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# Parameters decay is kept off by name (the last part of a parameter's dotted name), besides every 1-D one.
NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token"})


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether weight decay applies: not to norms and biases (1-D) nor to position embeddings and class tokens."""
    return param.dim() > 1 and name.rsplit(".", 1)[-1] not in NO_DECAY_NAMES


def adamw_groups(named_params: Iterable[tuple[str, nn.Parameter]]) -> list[dict]:
    """Two parameter groups, always in this order: those that decay, then those with weight decay 0."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in named_params:
        (decay if decays(name, param) else no_decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """torch.optim.AdamW over `adamw_groups`: `weight_decay` on the first group, none on the second."""
    return torch.optim.AdamW(adamw_groups(named_params), lr=lr, betas=betas, weight_decay=weight_decay)
