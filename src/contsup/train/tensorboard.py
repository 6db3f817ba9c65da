"""Optional TensorBoard logging (install extra `tensorboard`): each module's loss, errors, learning rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contsup.errors import ContsupError


class TensorBoardLog:
    """Writes each epoch's metrics row as scalars into `log_dir`, indexed by epoch."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ContsupError("TensorBoard logging needs the tensorboard package: "
                               "pip install 'contsup[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, row: dict[str, Any]) -> None:
        """One epoch: `loss/module_NN` (training loss, epoch mean), `error/*` (%), `lr`."""
        epoch = row["epoch"]
        for k, loss in enumerate([*row["local_losses"], row["train_loss"]], start=1):
            self.writer.add_scalar(f"loss/module_{k:02d}", loss, epoch)
        for name in ("train", "val", "test"):
            if f"{name}_error" in row:
                self.writer.add_scalar(f"error/{name}", row[f"{name}_error"], epoch)
        self.writer.add_scalar("lr", row["lr"], epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
