"""End-to-end baselines on the ranks of a pipeline: torch.distributed.pipelining's schedules, and DDP.

What a user who splits a model over devices would pick instead of local learning (docs/parallel.md):
- `gpipe`, `1f1b`: the backbone's units split into one stage per rank (`--stage-units`, else balanced by
  measured time), each batch cut into `--micro-batches`, exact end-to-end gradients (torch scales the summed
  micro-batch gradients by 1/M, so they are the full batch's mean; with BatchNorm each micro-batch has its
  own statistics, as in any micro-batched pipeline);
- `interleaved` (Interleaved 1F1B) and `zbv` (zero-bubble ZB-V): two stages a rank (looped, or V-shaped);
- `ddp`: every rank holds the whole network and trains its share of each batch under
  DistributedDataParallel; BatchNorm spans the full batch (`syncbn`), so a step equals one process's.
Every baseline trains the end-to-end network (`--modules 1`) and is a `Step` of the one Trainer: the same run
folder, metrics, merged checkpoint and summary as one process. Rank 0 reads the data (every rank, for DDP);
it hands each batch's size and labels to the other ranks with one small broadcast.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleZBVZeroBubble,
)
from torch.nn.parallel import DistributedDataParallel

from contsup.config import RunConfig
from contsup.data import DeviceLoader
from contsup.device import activate
from contsup.distributed.costmodel import calibrate_units
from contsup.distributed.pipeline import Groups, PipelineStep
from contsup.distributed.rank import env_rank, pick_device, rank_trainer
from contsup.distributed.stage import Stage
from contsup.distributed.syncbn import convert_sync_batchnorm
from contsup.distributed.topology import STAGES_PER_RANK, Topology, from_sizes, partition, stage_owners
from contsup.errors import ContsupError
from contsup.method.local_step import autocast
from contsup.method.losses import float32_loss
from contsup.method.network import LocalNetwork, Plan, num_classes
from contsup.models.chain import memory_format, to_format
from contsup.run import build_network, check_steps, load_data
from contsup.train.optim import param_names
from contsup.train.trainer import Trainer

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved": ScheduleInterleaved1F1B,
             "zbv": ScheduleZBVZeroBubble}


def check_baseline(cfg: RunConfig, world: int, one_process: bool = False) -> None:
    """Settings a baseline cannot run with, refused in one line before any process group starts (or, with
    `one_process`, before one process runs a schedule's micro-batches in turn)."""
    p, t = cfg.pipeline, cfg.train
    name = f"--parallel {p.parallel}"
    if cfg.local.modules != 1:
        where = " (place the stages with --stage-units)" if p.parallel != "ddp" else ""
        raise ContsupError(f"{name} trains the network end to end: use --modules 1{where}; local learning on "
                           "ranks is --parallel local")
    if p.replicas != 1 or p.stage_sizes:
        raise ContsupError(f"{name} takes neither --replicas nor --stage-sizes (those place contsup's pipeline)")
    if p.parallel == "ddp":
        if p.stage_units:
            raise ContsupError(f"{name} has no stages: every rank holds the whole network (drop --stage-units)")
        if t.batch_size % world:
            raise ContsupError(f"--batch-size {t.batch_size} must divide into the {world} ranks of {name}")
        return
    if world < 2 and not one_process:
        raise ContsupError(f"{name} needs at least 2 ranks, got {world}")
    if p.micro_batches < 1 or t.batch_size % p.micro_batches:
        raise ContsupError(f"--micro-batches {p.micro_batches} must divide --batch-size {t.batch_size}")
    if p.parallel != "gpipe" and p.micro_batches < world:
        raise ContsupError(f"{name} needs at least as many micro-batches as ranks: --micro-batches {p.micro_batches} "
                           f"< {world}")
    for flag, on in (("--bf16", t.bf16), ("--clip-grad", t.clip_grad > 0), ("--channels-last", t.channels_last),
                     ("--checkpoint-segments", cfg.local.checkpoint_segments != 0)):
        if on:
            raise ContsupError(f"{name} runs without {flag} (torch's schedule owns the forward, backward and "
                               "messages)")


def split_units(net: LocalNetwork, sizes: list[int] | None, stages: int, batch: int,
                ctrl: dist.ProcessGroup) -> list[range]:
    """Units of every stage: from `--stage-units`, else balanced by measured time (the same on every rank:
    each measures, rank 0's split is broadcast)."""
    units = list(net.blocks[0])
    if stages > len(units):
        raise ContsupError(f"cannot split {net.backbone_name}'s {len(units)} units into {stages} stages")
    if sizes:
        try:
            return from_sizes(sizes, len(units), stages)
        except ContsupError:
            raise ContsupError(f"--stage-units {','.join(map(str, sizes))}: need {stages} positive counts summing to "
                               f"the {len(units)} units of {net.backbone_name}") from None
    clone = copy.deepcopy(net)
    x = torch.randn(max(1, min(batch, 64)), *net.image_shape.dims, generator=torch.Generator().manual_seed(0))
    x = x.to(next(net.parameters()).device)
    cal = calibrate_units(clone, x, repeats=2)
    ranges = partition([f + b for f, b in zip(cal["unit_fwd"], cal["unit_bwd"], strict=True)], stages)
    box = [[len(r) for r in ranges]]
    dist.broadcast_object_list(box, src=0, group=ctrl)
    return from_sizes(box[0], len(units), stages)


@dataclass
class OwnedUnits:
    """The state of the units (and the classifier) one rank holds, as `Stage.state_dict` gives it."""

    net: LocalNetwork
    units: list[int]
    classifier: bool

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The owned entries of the network's state_dict, on the CPU."""
        prefixes = tuple(f"blocks.0.{i}." for i in self.units) + (("objectives.0.",) if self.classifier else ())
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items() if k.startswith(prefixes)}


class Labels:
    """Each training or evaluation batch of a phase: rank 0 reads it and broadcasts (size, labels) to every
    other rank, which sees (None, labels); an empty broadcast ends the phase."""

    def __init__(self, loader: DeviceLoader | None, rank: int, ctrl: dist.ProcessGroup, device: torch.device) -> None:
        self.loader, self.rank, self.ctrl, self.device = loader, rank, ctrl, device

    def set_epoch(self, epoch: int) -> None:
        """Select the loader's epoch (rank 0)."""
        if self.loader is not None:
            self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, torch.Tensor]]:
        if self.rank == 0:
            assert self.loader is not None
            for x, y in self.loader:
                dist.broadcast(torch.tensor([y.numel()]), 0, group=self.ctrl)
                dist.broadcast(y.cpu(), 0, group=self.ctrl)
                yield x, y
            dist.broadcast(torch.tensor([0]), 0, group=self.ctrl)
            return
        while True:
            size = torch.zeros(1, dtype=torch.int64)
            dist.broadcast(size, 0, group=self.ctrl)
            if int(size) == 0:
                return
            y = torch.empty(int(size), dtype=torch.int64)
            dist.broadcast(y, 0, group=self.ctrl)
            yield None, y.to(self.device)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The classifier's loss, as the end-to-end objective computes it (float32)."""
    return float32_loss(F.cross_entropy, logits, y)


class ScheduleStep(PipelineStep):
    """One rank's stages of an end-to-end pipeline under a torch.distributed.pipelining schedule.

    Shares `PipelineStep`'s merged checkpoints, reductions and summary line (they read `net`, `stage`, `topo`,
    `groups`, `names`, `device`); its own `__init__` replaces the local pipeline's links by torch's stages.
    """

    def __init__(self, net: LocalNetwork, ranges: list[range], parallel: str, batch: int, micro_batches: int,
                 device: torch.device, ctrl: dist.ProcessGroup, channels_last: bool = False) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = activate(device)
        self.net, self.device, self.names = net, device, param_names(net)
        self.topo, self.groups = Topology(world, world, 1, rank), Groups(ctrl, None)
        self.owners = stage_owners(parallel, world)
        self.ranges = ranges
        self.format = memory_format(channels_last)
        self.amp = autocast(device, False)
        self.bf16 = False
        units = list(net.blocks[0])
        last = len(ranges) - 1
        self.mine = [s for s, r in enumerate(self.owners) if r == rank]
        self.parts = {s: nn.Sequential(*units[ranges[s].start:ranges[s].stop],
                                       *([net.classifier] if s == last else [])) for s in self.mine}
        self.first, self.last = 0 in self.mine, last in self.mine
        self.modules = range(1) if self.last else range(0)  # the end-to-end network's one module, on the loss's rank
        self.main = rank == 0
        owned = [i for s in self.mine for i in ranges[s]]
        self.stage = OwnedUnits(net, owned, self.last)  # type: ignore[assignment]
        # Every stage's input and output shapes given: without them torch infers them by running each stage once
        # more on the first step, on uninitialised inputs past the first stage, which moves BatchNorm statistics.
        mb = batch // micro_batches
        shapes = [net.image_shape.dims, *(net.unit_shapes[r.stop - 1].dims for r in ranges[:-1]),
                  (num_classes(net.classifier),)]
        stages = [PipelineStage(self.parts[s], s, len(ranges), device, group=dist.group.WORLD,
                                input_args=torch.empty(mb, *shapes[s], device=device).requires_grad_(s > 0),
                                output_args=torch.empty(mb, *shapes[s + 1], device=device).requires_grad_())
                  for s in self.mine]
        cls = SCHEDULES[parallel]
        try:
            self.schedule = cls(stages[0] if STAGES_PER_RANK[parallel] == 1 else stages,  # type: ignore[arg-type]
                                n_microbatches=micro_batches, loss_fn=cross_entropy)
        except ValueError as err:
            raise ContsupError(f"--parallel {parallel} with --micro-batches {micro_batches}: {err}") from None

    def named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """The parameters of this rank's stages, by their names in the whole network."""
        own = {id(p) for part in self.parts.values() for p in part.parameters()}
        return [(n, p) for n, p in self.net.named_parameters() if id(p) in own]

    def loader(self, loader: DeviceLoader | None, train: bool) -> Labels:
        """The batches as this rank sees them (`Labels`), the same for training and evaluation."""
        return Labels(loader, self.topo.rank, self.groups.ctrl, self.device)

    def train(self, batch: tuple[torch.Tensor | None, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                               torch.Tensor]:
        """One schedule step over the batch's micro-batches (gradients accumulated, scaled to the batch mean)."""
        x, y = batch
        args = (to_format(x, self.format),) if self.first and x is not None else ()
        losses: list[torch.Tensor] = []
        out = self.schedule.step(*args, target=y if self.last else None, losses=losses if self.last else None)
        if not self.last:
            return torch.zeros(0, device=self.device), None, y
        return torch.stack(losses).mean().detach().reshape(1), out.detach(), y

    @torch.no_grad()
    def infer(self, batch: tuple[torch.Tensor | None, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The inference pass, stage after stage, activations sent point to point (no micro-batches)."""
        x, y = batch
        h = to_format(x, self.format) if x is not None else None
        for s in self.mine:
            if s > 0 and self.owners[s - 1] != self.topo.rank:
                shape = self.net.unit_shapes[self.ranges[s - 1].stop - 1].dims
                h = torch.empty(y.numel(), *shape, device=self.device)
                dist.recv(h, self.owners[s - 1])
                h = to_format(h, self.format)
            assert h is not None
            h = self.parts[s](h)
            if s + 1 < len(self.ranges) and self.owners[s + 1] != self.topo.rank:
                dist.send(h.contiguous(), self.owners[s + 1])
        return (h if self.last else None), y

    def end_phase(self) -> None:
        """Nothing outstanding: every send of a step completes within it."""

    def _one_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """This rank's stages of one schedule step on (x, y) (`PipelineStep.step_peak`)."""
        self.train((x if self.first else None, y))


class E2E(nn.Module):
    """The end-to-end network as one module (what DDP wraps): (loss, logits) of a batch."""

    def __init__(self, net: LocalNetwork) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every unit, the classifier and its cross entropy."""
        logits = self.net.classifier(self.net.blocks[0](x))
        return cross_entropy(logits, y), logits


class DDPStep(PipelineStep):
    """One rank of DistributedDataParallel: the whole network on this rank's share of every batch.

    Shares `PipelineStep`'s checkpoints (rank 0's copy), reductions and summary line.
    """

    def __init__(self, net: LocalNetwork, device: torch.device, ctrl: dist.ProcessGroup, bf16: bool = False,
                 channels_last: bool = False) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = activate(device, bf16)
        self.net, self.device = net, device
        self.topo, self.groups = Topology(world, 1, world, rank), Groups(ctrl, None)
        self.format = memory_format(channels_last)
        self.bf16, self.amp = bf16, autocast(device, bf16)
        self.modules, self.main = range(1), rank == 0
        self.stage = Stage(net, range(1))
        bn_group = dist.new_group()  # its own group: BatchNorm's all-reduces never meet DDP's gradient buckets
        if device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(net, bn_group)  # the network itself is no BatchNorm: in place
        else:
            convert_sync_batchnorm(net, bn_group)
        self.names = param_names(net)  # after the conversion: it makes new BatchNorm parameters
        self.ddp = DistributedDataParallel(E2E(net), device_ids=[device] if device.type == "cuda" else None,
                                           forward_sync_buffers=False)  # every BatchNorm buffer spans the batch already

    def named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """Every parameter (each rank holds the whole network)."""
        return self.net.named_parameters()

    def loader(self, loader: DeviceLoader | None, train: bool) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Every rank reads every batch, for training and evaluation alike."""
        assert loader is not None
        return loader

    def _share(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of a batch, in the network's memory format."""
        x, y = (torch.tensor_split(t, self.topo.world)[self.topo.rank] for t in batch)
        return to_format(x, self.format), y

    def train(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward and backward of this rank's share; DDP averages the gradients over the ranks."""
        x, y = self._share(batch)
        with self.amp:
            loss, logits = self.ddp(x, y)
        loss.backward()
        return loss.detach().reshape(1), logits.detach(), y

    @torch.no_grad()
    def infer(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference pass on this rank's share (the Trainer sums the counts over ranks)."""
        x, y = self._share(batch)
        with self.amp:
            return self.net(x), y

    def end_phase(self) -> None:
        """Nothing outstanding."""

    def _one_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """This rank's share of one step on (x, y) (`PipelineStep.step_peak`)."""
        self.train((x, y))


def build_baseline(cfg: RunConfig, plan: Plan | None = None) -> tuple[Trainer, PipelineStep]:
    """Join the process group and set up this rank's share of an end-to-end baseline in the one Trainer."""
    rank, world, local_rank = env_rank()
    p = cfg.pipeline
    check_baseline(cfg, world)
    backend, device, _ = pick_device(cfg, p.backend, local_rank)
    timeout = timedelta(seconds=p.timeout_s)
    dist.init_process_group(backend, timeout=timeout, rank=rank, world_size=world,
                            device_id=device if backend == "nccl" else None)
    ctrl = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    data = load_data(cfg)
    check_steps(len(data.train), cfg.train.batch_size)
    info = data.info
    net = build_network(cfg, info.channels, info.num_classes, info.size, plan)
    net = net.to(device, memory_format=memory_format(cfg.train.channels_last))
    step: ScheduleStep | DDPStep
    if p.parallel == "ddp":
        step = DDPStep(net, device, ctrl, cfg.train.bf16, cfg.train.channels_last)
        line = f"ddp: {world} ranks, {cfg.train.batch_size // world} images each a step"
    else:
        stages = STAGES_PER_RANK[p.parallel] * world
        ranges = split_units(net, p.stage_units, stages, cfg.train.batch_size // p.micro_batches, ctrl)
        step = ScheduleStep(net, ranges, p.parallel, cfg.train.batch_size, p.micro_batches, device, ctrl,
                            cfg.train.channels_last)
        line = (f"{p.parallel}: {stages} stages on {world} ranks (ranks {','.join(map(str, step.owners))}), "
                f"{p.micro_batches} micro-batches, units per stage {','.join(str(len(r)) for r in ranges)}")
    if rank == 0:
        print(line, flush=True)
    return rank_trainer(cfg, data, step, reads=p.parallel == "ddp" or rank == 0), step
