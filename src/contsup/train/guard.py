"""Stop a run whose numbers stop being finite, before anything non-finite reaches its run folder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from contsup.errors import ContsupError

_ADVICE = "the run stopped; its folder keeps the checkpoint of the last finished epoch; lower --lr and start again"


def check_losses(losses: Sequence[float], epoch: int, step: int | None = None) -> None:
    """Raise when a module's loss (values the loop already holds on the host) is NaN or infinite."""
    for k, value in enumerate(losses):
        if not math.isfinite(value):
            where = f"epoch {epoch}, step {step}" if step is not None else f"epoch {epoch}"
            raise ContsupError(f"the loss of module {k + 1} became {value} at {where}: {_ADVICE}")


def check_row(row: dict[str, Any]) -> None:
    """Raise when an epoch's metrics row holds a NaN or infinity (it would not be valid JSON)."""
    for key, value in row.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ContsupError(f"{key} became {value} in epoch {row.get('epoch')}: {_ADVICE}")
