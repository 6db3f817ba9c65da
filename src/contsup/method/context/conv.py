"""Context encoders for feature-map cuts: conv-BN-ReLU layers and an average pool to the cut's size.

Mode E's image encoder and mode Rn's residual encoder (docs/method.md, context).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contsup.method.context.lean import lean_applies, lean_encode
from contsup.models.chain import Shape


def adaptive_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pool to `size`; no work when the size already matches.

    When `size` divides the input's size, the same averages come from the faster plain average pool.
    """
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h % size[0] == 0 and w % size[1] == 0:
        return F.avg_pool2d(x, (h // size[0], w // size[1]))
    return F.adaptive_avg_pool2d(x, size)


class ConvEncoder(nn.Module):
    """conv-BN-ReLU layers (`net`) and an adaptive average pool to the cut's size, after them or first.

    `lean` computes the same function holding only its input for backward (`lean.py`; with plain
    BatchNorm layers: the pipeline's synchronised BatchNorm runs the straightforward way);
    `max_elements` bounds, per sample, the full-resolution intermediates the lean version makes at once.
    """

    def __init__(self, net: nn.Sequential, target: Shape, pool_first: bool, lean: bool, max_elements: int) -> None:
        super().__init__()
        self.net = net
        self.size = (target.height, target.width)
        self.pool_first = pool_first
        self.lean = lean
        self.max_elements = max_elements

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Adaptive average pool to the cut's size."""
        return adaptive_pool(x, self.size)

    def layers(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        """The (conv, BN) pairs of the conv-BN-ReLU layers, in order."""
        mods = list(self.net)
        return [(mods[i], mods[i + 1]) for i in range(0, len(mods), 3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded input at the cut's shape."""
        if self.lean and lean_applies(self):
            return lean_encode(self, x)
        if self.pool_first:
            return self.net(self.pool(x))
        return self.pool(self.net(x))


class ImageEncoder(ConvEncoder):
    """Mode E: conv3x3(in -> 12) -> BN -> ReLU -> conv3x3(12 -> C) -> BN -> ReLU -> pool to h_k's size.

    `pool_first` is a cheaper variant that is not the paper's: the image is pooled to h_k's size first,
    so both convolutions run at the cut's resolution (same parameters, different function).
    """

    def __init__(
        self, in_ch: int, target: Shape, hidden: int = 12, pool_first: bool = False, lean: bool = False,
        max_elements: int = 0,
    ) -> None:
        net = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 3, 1, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, target.channels, 3, 1, 1),
            nn.BatchNorm2d(target.channels),
            nn.ReLU(inplace=True),
        )
        super().__init__(net, target, pool_first, lean, max_elements)


class ResidualEncoder(ConvEncoder):
    """Mode Rn: conv1x1(C_src -> C) -> BN -> ReLU -> pool to h_k's size."""

    def __init__(self, in_ch: int, target: Shape, lean: bool = False, max_elements: int = 0) -> None:
        net = nn.Sequential(
            nn.Conv2d(in_ch, target.channels, 1), nn.BatchNorm2d(target.channels), nn.ReLU(inplace=True)
        )
        super().__init__(net, target, False, lean, max_elements)
