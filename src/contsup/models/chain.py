"""A network as a chain of units plus a classifier: the form every cut, head and encoder works on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contsup.errors import ContsupError


class Classifier(nn.Module):
    """Global average pool -> linear: the last module's task head."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from a feature map (or an already flat feature)."""
        if h.dim() == 4:
            h = h.mean(dim=(2, 3))
        return self.fc(h)


@dataclass(frozen=True)
class Shape:
    """Channels and spatial size of a feature map (batch dimension left out)."""

    channels: int
    height: int
    width: int


class Backbone(nn.Module):
    """Units applied one after the other, then a classifier; cuts fall between units."""

    def __init__(
        self,
        units: Sequence[nn.Module],
        classifier: nn.Module,
        unit_names: Sequence[tuple[int, int]] | None = None,
        name: str = "custom",
    ) -> None:
        super().__init__()
        if len(units) == 0:
            raise ContsupError("a backbone needs at least one unit")
        self.units = nn.ModuleList(units)
        self.classifier = classifier
        self.unit_names = list(unit_names) if unit_names else [(0, i) for i in range(len(units))]
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain end-to-end forward pass."""
        for unit in self.units:
            x = unit(x)
        return self.classifier(x)

    @classmethod
    def from_units(
        cls, units: nn.Sequential | Sequence[nn.Module], num_classes: int, sample: torch.Tensor
    ) -> Backbone:
        """Wrap a user's chain of units (each mapping a 4-D map to a 4-D map) with pool + linear."""
        units = list(units)
        shapes = probe_shapes(units, sample)
        return cls(units, Classifier(shapes[-1].channels, num_classes))


@torch.no_grad()
def probe_shapes(units: Sequence[nn.Module], sample: torch.Tensor) -> list[Shape]:
    """Output shape of every unit for one sample input (run in eval mode, state left untouched)."""
    if sample.dim() == 3:
        sample = sample.unsqueeze(0)
    was_training = [u.training for u in units]
    shapes = []
    x = sample[:1]
    try:
        for unit in units:
            unit.eval()
            x = unit(x)
            if x.dim() != 4:
                raise ContsupError(
                    f"every unit must output a 4-D feature map (N, C, H, W); got shape {tuple(x.shape)}"
                )
            shapes.append(Shape(*x.shape[1:]))
    finally:
        for unit, mode in zip(units, was_training, strict=True):
            unit.train(mode)
    return shapes
