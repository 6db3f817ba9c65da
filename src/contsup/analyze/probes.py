"""Label probes on frozen features: a linear probe (full-batch L-BFGS) and a small MLP probe (Adam).

A probe's held-out cross entropy bounds H(y | h) from above (for any decoder q, E[-log q(y|h)] >= H(y|h)),
so H(y) - CE is a lower bound on I(h, y), up to how well the probe family and its budget fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ProbeConfig:
    """Fixed budgets of the label probes (two runs with the same config and seed agree)."""

    pool: int = 4  # average-pool features to pool x pool before probing (0: use them whole)
    linear_steps: int = 100  # full-batch L-BFGS iterations of the linear probe
    weight_decay: float = 1e-3  # L2 penalty of the probes (on the sum of squared weights for the linear probe)
    mlp: bool = False  # also train the MLP probe
    mlp_hidden: int = 256
    mlp_steps: int = 300  # Adam steps of the MLP probe
    mlp_batch: int = 256
    mlp_lr: float = 1e-3


@dataclass
class ProbeResult:
    """What a probe scored: accuracy (%) on train and held-out data, held-out cross entropy (nats)."""

    train_acc: float
    acc: float
    ce: float


def flatten_features(h: torch.Tensor, pool: int) -> torch.Tensor:
    """Probe inputs (N, D): feature maps (N, C, H, W) average-pooled to pool x pool (if larger), token sequences
    (N, T, D) averaged over their tokens (pool > 0, as the `meantoken` heads read them), then flattened."""
    if h.dim() == 4 and pool > 0 and (h.shape[-2] > pool or h.shape[-1] > pool):
        h = F.adaptive_avg_pool2d(h, (min(pool, h.shape[-2]), min(pool, h.shape[-1])))
    if h.dim() == 3 and pool > 0:
        h = h.mean(dim=1)
    return h.reshape(h.shape[0], -1).float()


def label_entropy(y: torch.Tensor, classes: int) -> float:
    """Plug-in entropy H(y) in nats of a label vector."""
    p = torch.bincount(y, minlength=classes).double() / y.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both sets by the training set's per-dimension mean and standard deviation."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy %, mean cross entropy) of a model on (x, y)."""
    with torch.no_grad():
        logits = model(x)
        return float((logits.argmax(1) == y).float().mean() * 100), float(F.cross_entropy(logits, y))


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    classes: int, cfg: ProbeConfig,
) -> ProbeResult:
    """Multinomial logistic regression on standardized features, fit by full-batch L-BFGS (convex: no seed)."""
    train_x, test_x = standardize(train_x, test_x)
    model = nn.Linear(train_x.shape[1], classes)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=cfg.linear_steps, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(train_x), train_y) + cfg.weight_decay * model.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ProbeResult(_score(model, train_x, train_y)[0], *_score(model, test_x, test_y))


def mlp_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    classes: int, cfg: ProbeConfig, seed: int,
) -> ProbeResult:
    """One-hidden-layer MLP on standardized features, Adam on seeded mini-batches for a fixed step count."""
    train_x, test_x = standardize(train_x, test_x)
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(train_x.shape[1], cfg.mlp_hidden), nn.ReLU(), nn.Linear(cfg.mlp_hidden, classes))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            bound = 1 / math.sqrt(layer.in_features)
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) * 2 * bound - bound)
            layer.bias.zero_()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.mlp_lr, weight_decay=cfg.weight_decay)
    n = train_x.shape[0]
    for _ in range(cfg.mlp_steps):
        idx = torch.randint(0, n, (min(cfg.mlp_batch, n),), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
        opt.step()
    return ProbeResult(_score(model, train_x, train_y)[0], *_score(model, test_x, test_y))
