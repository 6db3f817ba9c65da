"""The pipeline's step: each rank trains its modules on the micro-batches streaming through it.

Per batch, a stage receives what crosses its front cut, runs its modules' local steps, sends its
last module's output on and all-reduces gradients with the same stage of the other replicas; the
one `Trainer` loop then steps the stage's optimizer. Nothing flows backwards between ranks, so rank
r works on batch t while rank r-1 already works on batch t+1; the result equals the single-process
loop (docs/method.md, pipeline).

On NCCL the tensors of a send and a stage's gradient all-reduce travel on two communicators (the pair's
and the stage group's), whose kernels wait on the GPU for their peers; two such kernels in flight at once
on one rank may deadlock when their peers issue them in another order. So, deliberately, a rank with
replicas finishes the batch's sends before it starts the all-reduce (`train`): one communicator at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from contsup.config import PipelineConfig
from contsup.data import DeviceLoader
from contsup.device import activate, to_host_tree
from contsup.distributed.comm import END, EVAL, TRAIN, Link, Message
from contsup.distributed.stage import Stage
from contsup.distributed.topology import Topology
from contsup.memory import PeakMemory, measure_peak
from contsup.method.local_step import autocast, modules_step
from contsup.method.network import LocalNetwork, num_classes
from contsup.method.objective import Targets
from contsup.models.chain import memory_format, to_format
from contsup.train.checkpoint import load_checkpoint
from contsup.train.optim import load_named_state, merge_named_states, named_state, param_names
from contsup.train.peak import peak_memory

__all__ = ["Feed", "Groups", "Inbox", "PipelineConfig", "PipelineStep"]


@dataclass
class Groups:
    """Process groups: the control group (CPU, gloo) over all ranks, and this stage's replica group."""

    ctrl: dist.ProcessGroup
    stage: dist.ProcessGroup | None  # None when R = 1


class PipelineStep:
    """One rank's step of a pipelined (and possibly data-parallel) run: the `Step` of its stage."""

    def __init__(self, net: LocalNetwork, stage: Stage, topo: Topology, groups: Groups, device: torch.device,
                 comm_device: torch.device, inflight: int, bf16: bool = False, channels_last: bool = False) -> None:
        device = activate(device, bf16)
        self.net, self.stage, self.topo, self.groups, self.device = net, stage, topo, groups, device
        self.modules = stage.modules
        self.main = topo.rank == 0
        self.bf16 = bf16
        self.amp = autocast(device, bf16)
        self.format = memory_format(channels_last)
        self.names = param_names(net)
        self.comm_device = comm_device
        self.link_in = Link(net, self.modules.start, device, comm_device, groups.ctrl, inflight,
                            self.format) if not topo.first else None
        self.link_out = Link(net, self.modules.stop, device, comm_device, groups.ctrl, inflight,
                             self.format) if not topo.last else None

    def named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """The parameters of this stage's modules, by their names in the whole network."""
        own = {id(p) for p in self.stage.module().parameters()}
        return [(n, p) for n, p in self.net.named_parameters() if id(p) in own]

    # -- batches ----------------------------------------------------------------------------------
    def loader(self, loader: DeviceLoader | None, train: bool) -> Iterable[Message]:
        """The batches entering this stage: this replica's share of `loader` on the first stage, else received."""
        return Feed(self, loader, train) if self.topo.first else Inbox(self)

    def _send(self, msg: Message) -> None:
        if self.link_out is not None and self.topo.next_rank is not None:
            self.link_out.send(msg, self.topo.next_rank)

    def end_phase(self) -> None:
        """Tell the next stage the phase is over and wait for every outstanding send."""
        self._send(Message(END))
        if self.link_out is not None:
            self.link_out.flush()

    # -- steps ------------------------------------------------------------------------------------
    def train(self, msg: Message) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """This stage's local steps on one micro-batch; sends the last output on, all-reduces gradients."""
        assert msg.h is not None and msg.sources is not None and msg.y is not None
        sources = dict(msg.sources)
        h, losses = modules_step(self.net, self.modules, msg.h, sources, Targets(msg.y, msg.pixels), self.amp)
        self._send(Message(TRAIN, h, sources, msg.y, msg.pixels))
        if self.groups.stage is not None and self.comm_device.type == "cuda" and self.link_out is not None:
            self.link_out.flush()  # host sync: NCCL never holds a send and the all-reduce in flight at once
        self._all_reduce_grads()
        return losses, h if self.topo.last else None, msg.y

    def infer(self, msg: Message) -> tuple[torch.Tensor | None, torch.Tensor]:
        """This stage's modules of the inference pass on one micro-batch; sends the output on."""
        assert msg.h is not None and msg.sources is not None and msg.y is not None
        sources, h = dict(msg.sources), msg.h
        with self.amp:
            for k in self.modules:
                h = self.net.blocks[k](self.net.module_input(k, h, sources))
            if self.topo.last:
                h = self.net.classifier(h)
        self._send(Message(EVAL, h, sources, msg.y))
        return h if self.topo.last else None, msg.y

    def step_peak(self, batch_size: int) -> PeakMemory:
        """Peak tensor memory this rank allocates in one more training step, on a seeded random batch after the
        epochs, measured as one process's step is (`contsup.train.peak.step_peak`): every rank at once, its
        messages included. The gradients are dropped and the BatchNorm buffers and random generators restored."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.net.source_shapes[0].batch(batch_size), generator=g).to(self.device)
        y = torch.randint(0, num_classes(self.net.classifier), (batch_size,), generator=g).to(self.device)
        buffers = {k: v.clone() for k, v in self.net.named_buffers()}
        self.net.train()
        with torch.random.fork_rng(devices=[]):
            _, peak = measure_peak(lambda: self._one_step(to_format(x, self.format), y), self.device)
        with torch.no_grad():
            for k, v in self.net.named_buffers():
                v.copy_(buffers[k])
        for param in self.net.parameters():
            param.grad = None
        return peak

    def _one_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """This rank's share of one training step on (x, y), as the epochs run it."""
        if self.topo.first:
            x, y = (torch.tensor_split(t, self.topo.replicas)[self.topo.replica] for t in (x, y))
            pixels = torch.rand_like(x) if self.net.needs_pixels else None
            self.train(Message(TRAIN, x, {0: x}, y, pixels))
        else:
            for msg in Inbox(self):
                self.train(msg)
        self.end_phase()

    def _all_reduce_grads(self) -> None:
        """Average gradients over this stage's replicas (one flat all-reduce)."""
        if self.groups.stage is None:
            return
        grads = [p.grad for p in self.stage.module().parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.groups.stage)
        flat /= self.topo.replicas
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """`t` summed (or `max`) over every rank."""
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=self.groups.ctrl)
        return t

    def describe(self) -> tuple[str, str]:
        """The ranks' devices and shape, and the largest rank's peak memory reading."""
        topo = self.topo
        return (f"{self.device} x {topo.world} ranks ({topo.replicas} x {topo.stages} stages)",
                peak_memory(self.device)[1] + ", largest rank")

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """On rank 0: the whole network's and optimizer's state merged from every stage, as one process writes it.

        Each stage's first replica contributes its weights and buffers and its optimizer's named state; the
        merge lists every group's parameters in the network's order (`merge_named_states`).
        """
        part = to_host_tree({"model": self.stage.state_dict(), "optimizer": named_state(optimizer, self.names)}) \
            if self.topo.replica == 0 else None  # on the CPU: rank 0 unpickles no other rank's GPU tensors
        parts: list[Any] = [None] * self.topo.world if self.topo.rank == 0 else []
        dist.gather_object(part, parts if self.topo.rank == 0 else None, dst=0, group=self.groups.ctrl)
        if self.topo.rank != 0:
            return None
        model: dict[str, torch.Tensor] = {}
        for p in parts:
            if p is not None:
                model.update(p["model"])
        expected = self.net.state_dict().keys()
        if set(model) != set(expected):
            raise RuntimeError(f"merged checkpoint misses {sorted(set(expected) - set(model))[:5]}")
        order = [name for name, _ in self.net.named_parameters()]
        return {"model": {k: model[k] for k in expected},
                "optimizer": merge_named_states((p["optimizer"] for p in parts if p is not None), order)}

    def read(self, path: Path) -> dict[str, Any]:
        """A (merged or single-process) checkpoint: rank 0 reads it, every rank receives it."""
        box: list[Any] = [load_checkpoint(path) if self.topo.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.groups.ctrl)
        return box[0]

    def restore(self, payload: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        """Load the network, and this stage's part of the (named) optimizer state."""
        self.net.load_state_dict(payload["model"])
        load_named_state(optimizer, payload["optimizer"], self.names)


class Feed:
    """The first stage's batches: this replica's share of each loader batch, as messages."""

    def __init__(self, step: PipelineStep, loader: DeviceLoader | None, train: bool) -> None:
        assert loader is not None
        self.step, self.loader, self.train = step, loader, train

    def set_epoch(self, epoch: int) -> None:
        """Select the loader's epoch."""
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[Message]:
        topo, step = self.step.topo, self.step
        needs_pixels = step.net.needs_pixels
        for x, y in self.loader:
            x, y = (torch.tensor_split(t, topo.replicas)[topo.replica] for t in (x, y))
            if x.shape[0] == 0:
                continue
            x = to_format(x, step.format)
            pixels = self.loader.denormalize(x) if needs_pixels and self.train else None
            yield Message(TRAIN if self.train else EVAL, x, {0: x}, y, pixels)


class Inbox:
    """A later stage's batches: messages from the previous rank until it ends the phase."""

    def __init__(self, step: PipelineStep) -> None:
        self.step = step

    def __iter__(self) -> Iterator[Message]:
        link, prev = self.step.link_in, self.step.topo.prev_rank
        assert link is not None and prev is not None
        while True:
            msg = link.recv(prev)
            if msg.kind == END:
                return
            yield msg
