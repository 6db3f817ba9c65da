"""Shared fixtures: tiny networks and batches for fast CPU tests."""

from __future__ import annotations

import pytest
import torch

from contsup.method import LocalConfig, LocalNetwork
from contsup.models import resnet

torch.set_num_threads(2)


def tiny_net(modules: int = 4, context: str = "R1E", in_ch: int = 3, size: int = 16, **kw) -> LocalNetwork:
    """ResNet-20 (10 units) on small images, cut into `modules` modules."""
    torch.manual_seed(0)
    backbone = resnet(20, in_ch, 10)
    config = LocalConfig(modules=modules, context=context, **kw)
    return LocalNetwork(backbone, config, torch.zeros(1, in_ch, size, size))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A small random batch of 3x16x16 images with labels."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
