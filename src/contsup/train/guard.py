"""Stop a run whose numbers stop being finite, before anything non-finite reaches its run folder."""

from __future__ import annotations

import math
from typing import Any

import torch

from contsup.errors import ContsupError

_ADVICE = "the run stopped; its folder keeps the checkpoint of the last finished epoch, if any; lower --lr"


def check_row(row: dict[str, Any]) -> None:
    """Raise when an epoch's metrics row holds a NaN or infinity (it would not be valid JSON)."""
    for key, value in row.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ContsupError(f"{key} became {value} in epoch {row.get('epoch')}: {_ADVICE}")


class FiniteWatch:
    """The first step at which each module's loss was not finite, kept on the device (no host sync per step)."""

    def __init__(self, modules: int, device: torch.device) -> None:
        self.first = torch.full((modules,), -1, dtype=torch.long, device=device)

    def update(self, mods: range, losses: torch.Tensor, step: int) -> None:
        """Note the step for modules `mods` whose loss in `losses` is NaN or infinite (first time only)."""
        seen = self.first[mods.start:mods.stop]
        seen.copy_(torch.where(~torch.isfinite(losses) & (seen < 0), step, seen))

    def check(self, first: torch.Tensor, epoch: int) -> None:
        """Raise naming the first module whose loss stopped being finite; `first` is `self.first` on the host,
        reduced (max) over every process."""
        bad = [(k, int(s)) for k, s in enumerate(first.tolist()) if s >= 0]
        if bad:
            k, step = bad[0]
            raise ContsupError(f"the loss of module {k + 1} stopped being finite at epoch {epoch}, step {step + 1}: "
                               + _ADVICE)
