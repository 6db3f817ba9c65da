"""A small seeded, learnable synthetic image dataset for tests and smoke runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contsup.data.specs import DatasetInfo
from contsup.data.split import Split
from contsup.errors import ContsupError


@dataclass(frozen=True)
class SyntheticOptions:
    """Shape, size and seed of the synthetic dataset."""

    channels: int = 3
    size: int = 32
    num_classes: int = 10
    train: int = 512
    test: int = 256
    seed: int = 0


def synthetic_info(opts: SyntheticOptions) -> DatasetInfo:
    """DatasetInfo of the synthetic dataset (reflect pad 4 as for CIFAR, flip)."""
    c = opts.channels
    return DatasetInfo("synthetic", c, opts.size, opts.num_classes, (0.5,) * c, (0.25,) * c,
                       4, "reflect", True)


def _make(templates: torch.Tensor, n: int, gen: torch.Generator) -> Split:
    """`n` images: a random class's template, random brightness, plus Gaussian noise."""
    k, c, s, _ = templates.shape
    labels = torch.randint(0, k, (n,), generator=gen)
    gain = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    noise = torch.randn(n, c, s, s, generator=gen)
    x = 128 + 50 * gain * templates[labels] + 30 * noise
    return Split(x.round().clamp(0, 255).to(torch.uint8), labels.to(torch.int64))


def make_synthetic(opts: SyntheticOptions) -> tuple[Split, Split]:
    """Generate (train, test): each class is a smooth random pattern, images add noise."""
    if min(opts.channels, opts.size, opts.num_classes, opts.train, opts.test) < 1:
        raise ContsupError(f"synthetic options must all be positive: {opts}")
    gen = torch.Generator().manual_seed(opts.seed)
    coarse = torch.randn(opts.num_classes, opts.channels, 4, 4, generator=gen)
    templates = F.interpolate(coarse, size=(opts.size, opts.size), mode="bilinear",
                              align_corners=False)
    templates = templates / templates.flatten(1).std(dim=1).clamp_min(1e-6)[:, None, None, None]
    return _make(templates, opts.train, gen), _make(templates, opts.test, gen)
