"""What the training loop runs per batch: the `Step` interface, and `LocalStep`, every module in this process.

`contsup.train.trainer.Trainer.fit` is the same for one process and for every rank of a pipeline; only the
step differs (`contsup.distributed.pipeline.PipelineStep` runs one stage's modules and passes the batch on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from contsup.config import TrainConfig
from contsup.device import activate, resolve_device, to_host_tree
from contsup.errors import ContsupError
from contsup.method.local_step import autocast, modules_step
from contsup.method.network import LocalNetwork
from contsup.method.objective import Targets
from contsup.models.chain import memory_format, to_format
from contsup.train.checkpoint import load_checkpoint
from contsup.train.optim import load_named_state, named_state, param_names
from contsup.train.peak import peak_memory


class Step(Protocol):
    """What differs between one process and a pipeline rank; the Trainer's loop is the same for both."""

    net: LocalNetwork
    device: torch.device
    modules: range  # the modules whose local steps this process runs
    main: bool  # this process prints the log line and writes the run folder

    def named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """The parameters this process optimises, by their names in the whole network."""
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
        """{"model", "optimizer" (named, `contsup.train.optim`)} of the whole network on the main process."""
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
    """Every module's local step in this process, on one device (the network is moved there; `cuda` is
    made `cuda:N`, the current device, and activated: `contsup.device.activate`).

    Batches may come from anywhere: each is moved to the device and put in the network's memory format.
    `pixels` maps a normalised batch back to the image in [0, 1] when an objective reads it (reconstruction).
    With `micro_batches` M > 1 each batch trains as M micro-batches in turn, what torch's pipeline schedules
    compute on ranks (docs/parallel.md): each micro-batch's own BatchNorm statistics, gradients summed, then
    divided by M.
    """

    def __init__(self, net: LocalNetwork, device: torch.device, bf16: bool = False, channels_last: bool = False,
                 pixels: Callable[[torch.Tensor], torch.Tensor] | None = None, micro_batches: int = 1) -> None:
        self.device = device = activate(device, bf16)
        self.bf16 = bf16
        self.format = memory_format(channels_last)
        self.net = net.to(device, memory_format=self.format) if channels_last else net.to(device)
        self.modules = range(self.net.num_modules)
        self.main = True
        self.amp = autocast(device, bf16)
        self.pixels = pixels if self.net.needs_pixels else None
        self.micro_batches = micro_batches

    @classmethod
    def of(cls, net: LocalNetwork, config: TrainConfig, pixels: Callable[[torch.Tensor], torch.Tensor] | None = None,
           micro_batches: int = 1) -> LocalStep:
        """The training step of `net` as `config` sets it (its device, bf16, channels_last); with the
        reconstruction term, `pixels` maps a normalised batch back to the image (`DeviceLoader.denormalize`)."""
        if net.needs_pixels and pixels is None:
            raise ContsupError("the reconstruction term needs the images' pixels in [0, 1]: pass pixels= (the "
                               "inverse of your loader's normalisation, e.g. a DeviceLoader's denormalize)")
        return cls(net, resolve_device(config.device), config.bf16, config.channels_last, pixels, micro_batches)

    def named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """Every parameter of the network."""
        return self.net.named_parameters()

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return to_format(x.to(self.device, non_blocking=True), self.format), y.to(self.device, non_blocking=True)

    def train(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every module's local step on one (x, y) batch (on its micro-batches in turn, when there are several)."""
        x, y = self._to_device(*batch)
        if self.micro_batches == 1:
            return (*self._steps(x, y), y)
        m = self.micro_batches
        parts = [self._steps(xm, ym) for xm, ym in zip(x.tensor_split(m), y.tensor_split(m), strict=True)]
        for p in self.net.parameters():  # the batch's mean gradient, scaled as torch's schedules scale it
            if p.grad is not None:
                p.grad.div_(m)
        return torch.stack([losses for losses, _ in parts]).mean(0), torch.cat([out for _, out in parts]), y

    def _steps(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the modules' losses, the logits) of every module's local step on (x, y); gradients accumulate."""
        targets = Targets(y, self.pixels(x) if self.pixels is not None else None)
        logits, losses = modules_step(self.net, self.modules, x, {0: x}, targets, self.amp)
        return losses, logits

    def infer(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's inference pass on one (x, y) batch."""
        x, y = self._to_device(*batch)
        with self.amp:
            return self.net(x), y

    def end_phase(self) -> None:
        """Nothing to close in one process."""

    def reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """One process: `t` itself."""
        return t

    def checkpoint(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The network's and the optimizer's state (the optimizer's keyed by parameter name), on the CPU."""
        state = {"model": self.net.state_dict(), "optimizer": named_state(optimizer, param_names(self.net))}
        return to_host_tree(state)

    def read(self, path: Path) -> dict[str, Any]:
        """The checkpoint at `path`, on this device."""
        return load_checkpoint(path, map_location=self.device)

    def restore(self, payload: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        """Load the model and optimizer state."""
        self.net.load_state_dict(payload["model"])
        load_named_state(optimizer, payload["optimizer"], param_names(self.net))

    def describe(self) -> tuple[str, str]:
        """This device, and its peak memory reading."""
        return str(self.device), peak_memory(self.device)[1]
