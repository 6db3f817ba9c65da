"""The pipeline's step: each rank trains its modules on the micro-batches streaming through it.

Per batch, a stage receives what crosses its front cut, runs its modules' local steps, sends its
last module's output on and all-reduces gradients with the same stage of the other replicas; the
one `Trainer` loop then steps the stage's optimizer. Nothing flows backwards between ranks, so rank
r works on batch t while rank r-1 already works on batch t+1; the result equals the single-process
loop (docs/method.md, pipeline).
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
from contsup.distributed.comm import END, EVAL, TRAIN, Link, Message
from contsup.distributed.stage import Stage, param_index
from contsup.distributed.topology import Topology
from contsup.method.network import LocalNetwork

__all__ = ["Feed", "Groups", "Inbox", "PipelineConfig", "PipelineStep"]
from contsup.method.step import modules_step
from contsup.train.checkpoint import load_checkpoint
from contsup.train.memory import peak_memory
from contsup.train.steps import bf16_autocast


@dataclass
class Groups:
    """Process groups: the control group (CPU, gloo) over all ranks, and this stage's replica group."""

    ctrl: dist.ProcessGroup
    stage: dist.ProcessGroup | None  # None when R = 1


class PipelineStep:
    """One rank's step of a pipelined (and possibly data-parallel) run: the `Step` of its stage."""

    def __init__(self, net: LocalNetwork, stage: Stage, topo: Topology, groups: Groups, device: torch.device,
                 comm_device: torch.device, inflight: int, bf16: bool = False, channels_last: bool = False) -> None:
        self.net, self.stage, self.topo, self.groups, self.device = net, stage, topo, groups, device
        self.modules = stage.modules
        self.main = topo.rank == 0
        self.autocast = bf16_autocast(device) if bf16 else None
        self.channels_last = channels_last
        self.link_in = Link(net, self.modules.start, device, comm_device, inflight,
                            channels_last) if not topo.first else None
        self.link_out = Link(net, self.modules.stop, device, comm_device, inflight,
                             channels_last) if not topo.last else None

    def parameters(self) -> Iterable[nn.Parameter]:
        """The parameters of this stage's modules."""
        return self.stage.module().parameters()

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
        h, losses = modules_step(self.net, self.modules, msg.h, sources, msg.y, msg.pixels, self.autocast)
        self._send(Message(TRAIN, h, sources, msg.y, msg.pixels))
        self._all_reduce_grads()
        return losses, h if self.topo.last else None, msg.y

    def infer(self, msg: Message) -> tuple[torch.Tensor | None, torch.Tensor]:
        """This stage's modules of the inference pass on one micro-batch; sends the output on."""
        assert msg.h is not None and msg.sources is not None and msg.y is not None
        sources = dict(msg.sources)
        with self.autocast if self.autocast is not None else torch.autocast(self.device.type, enabled=False):
            h = self.net.run(self.net.infer_module, msg.h, sources, self.modules)
        self._send(Message(EVAL, h, sources, msg.y))
        return h if self.topo.last else None, msg.y

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
    def _part(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """This stage's weights, buffers and optimizer state keyed by single-process parameter index."""
        if self.topo.replica != 0:
            return None
        params = list(self.stage.module().parameters())
        index = param_index(self.net, params)
        local = optimizer.state_dict()
        state = {index[i]: {k: v.cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                 for i, s in local["state"].items()}
        hyper = {k: v for k, v in local["param_groups"][0].items() if k != "params"}
        return {"model": self.stage.state_dict(), "optimizer_state": state, "hyper": hyper}

    def checkpoint(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """On rank 0: the whole network's and optimizer's state merged from every stage; None elsewhere."""
        parts: list[Any] = [None] * self.topo.world if self.topo.rank == 0 else []
        dist.gather_object(self._part(optimizer), parts if self.topo.rank == 0 else None, dst=0,
                           group=self.groups.ctrl)
        if self.topo.rank != 0:
            return None
        model: dict[str, torch.Tensor] = {}
        opt_state: dict[int, Any] = {}
        for part in parts:
            if part is not None:
                model.update(part["model"])
                opt_state.update(part["optimizer_state"])
        expected = self.net.state_dict().keys()
        if set(model) != set(expected):
            raise RuntimeError(f"merged checkpoint misses {sorted(set(expected) - set(model))[:5]}")
        n_params = len(list(self.net.parameters()))
        hyper = next(p for p in parts if p is not None)["hyper"]
        return {
            "model": {k: model[k] for k in expected},
            "optimizer": {"state": opt_state, "param_groups": [{**hyper, "params": list(range(n_params))}]},
        }

    def read(self, path: Path) -> dict[str, Any]:
        """A (merged or single-process) checkpoint: rank 0 reads it, every rank receives it."""
        box: list[Any] = [load_checkpoint(path) if self.topo.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.groups.ctrl)
        return box[0]

    def restore(self, payload: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        """Load the network, and this stage's part of the optimizer state."""
        self.net.load_state_dict(payload["model"])
        params = list(self.stage.module().parameters())
        glob = payload["optimizer"]
        state = {i: glob["state"][g] for i, g in enumerate(param_index(self.net, params)) if g in glob["state"]}
        hyper = {k: v for k, v in glob["param_groups"][0].items() if k != "params"}
        optimizer.load_state_dict({"state": state, "param_groups": [{**hyper, "params": list(range(len(params)))}]})


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
        decoders = len(step.net.decoders) > 0
        for x, y in self.loader:
            x, y = (torch.tensor_split(t, topo.replicas)[topo.replica] for t in (x, y))
            if x.shape[0] == 0:
                continue
            if step.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pixels = self.loader.denormalize(x) if decoders and self.train else None
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
