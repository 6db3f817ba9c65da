"""What the training loop runs per batch: the `Step` interface, and `LocalStep`, every module in this process.

`contsup.train.trainer.Trainer.fit` is the same for one process and for every rank of a pipeline; only the
step differs (`contsup.distributed.pipeline.PipelineStep` runs one stage's modules and passes the batch on).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from contsup.checks import device_from_name
from contsup.method.network import LocalNetwork
from contsup.method.step import modules_step
from contsup.train.checkpoint import load_checkpoint
from contsup.train.memory import peak_memory


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else the CPU; a device this machine lacks raises ContsupError."""
    return device_from_name(name)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format of the network and its batches (`--channels-last`, else the default contiguous one)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def bf16_autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on the device (`--bf16`)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Step(Protocol):
    """What differs between one process and a pipeline rank; the Trainer's loop is the same for both."""

    net: LocalNetwork
    device: torch.device
    modules: range  # the modules whose local steps this process runs
    main: bool  # this process prints the log line and writes the run folder

    def parameters(self) -> Iterable[nn.Parameter]:
        """The parameters this process optimises."""
        ...

    def train(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Local steps of `modules` on one batch (gradients ready to step): (losses, logits or None, labels)."""
        ...

    def infer(self, batch: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The inference pass of `modules` on one batch: (final logits or None, labels)."""
        ...

    def end_phase(self) -> None:
        """Close an epoch's training or an evaluation pass (a pipeline tells the next stage)."""
        ...

    def reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """`t` (on the CPU) summed (or `max`) over every process."""
        ...

    def checkpoint(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """{"model", "optimizer"} state of the whole network on the main process; None elsewhere."""
        ...

    def read(self, path: Path) -> dict[str, Any]:
        """A checkpoint payload, on every process."""
        ...

    def restore(self, payload: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        """Load this process's share of a checkpoint's model and optimizer state."""
        ...

    def describe(self) -> tuple[str, str]:
        """For the summary: (the device(s) the step runs on, what its peak memory measures)."""
        ...


class LocalStep:
    """Every module's local step in this process, on one device."""

    def __init__(self, net: LocalNetwork, device: torch.device, bf16: bool = False, channels_last: bool = False,
                 pixels: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.device = device
        self.channels_last = channels_last
        self.net = net.to(device)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.modules = range(self.net.num_modules)
        self.main = True
        self.autocast = bf16_autocast(device) if bf16 else None
        # Reconstruction targets are the un-normalised image: the loader's inverse transform, if any.
        self.pixels = pixels if len(self.net.decoders) else None

    def parameters(self) -> Iterable[nn.Parameter]:
        """Every parameter of the network."""
        return self.net.parameters()

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`local_step` on one (x, y) batch."""
        x, y = self._to_device(*batch)
        pixels = self.pixels(x) if self.pixels is not None else None
        logits, losses = modules_step(self.net, self.modules, x, {0: x}, y, pixels, self.autocast)
        return losses, logits, y

    def infer(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's inference pass on one (x, y) batch."""
        x, y = self._to_device(*batch)
        with self.autocast if self.autocast is not None else contextlib.nullcontext():
            return self.net(x), y

    def end_phase(self) -> None:
        """Nothing to close in one process."""

    def reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """One process: `t` itself."""
        return t

    def checkpoint(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The network's and the optimizer's state."""
        return {"model": self.net.state_dict(), "optimizer": optimizer.state_dict()}

    def read(self, path: Path) -> dict[str, Any]:
        """The checkpoint at `path`, on this device."""
        return load_checkpoint(path, map_location=self.device)

    def restore(self, payload: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        """Load the model and optimizer state."""
        self.net.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])

    def describe(self) -> tuple[str, str]:
        """This device, and its peak memory reading."""
        return str(self.device), peak_memory(self.device)[1]
