"""Start a rank under torchrun: process groups, stage assignment, and failure handling.

Every rank reads its place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Every blocking exchange carries the process groups' timeout, so a peer that dies
(its connections close) or hangs (nothing arrives) makes the waiting rank fail; that rank then
prints one line and leaves at once with a non-zero status, which in turn closes its own connections,
so the failure reaches every rank within a bounded time and no process is left waiting.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import threading
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from contsup.distributed.baselines import build_baseline
from contsup.distributed.pipeline import Groups, PipelineStep
from contsup.distributed.rank import env_rank, pick_device, rank_trainer
from contsup.distributed.stage import Stage, measure_costs
from contsup.distributed.syncbn import sync_batchnorm
from contsup.distributed.topology import Topology, from_sizes, partition
from contsup.errors import ContsupError
from contsup.method.network import LocalNetwork, Plan
from contsup.method.objective import Targets
from contsup.models.chain import memory_format, to_format
from contsup.run import (
    RunConfig,
    build_network,
    check_fit,
    check_steps,
    load_data,
    plan_from_checkpoint,
    prepare_run,
)
from contsup.train.runfolder import CHECKPOINT, WRITES, continue_hint, open_run_folder
from contsup.train.trainer import Trainer


def assign_modules(net: LocalNetwork, cfg: RunConfig, topo: Topology, ctrl: dist.ProcessGroup,
                   device: torch.device) -> list[range]:
    """Modules of every stage: from --stage-sizes, or balanced by per-module step time (averaged over ranks)."""
    k = net.num_modules
    if cfg.pipeline.stage_sizes:
        return from_sizes(cfg.pipeline.stage_sizes, k, topo.stages)
    if topo.stages == 1:
        return [range(k)]
    shape = net.source_shapes[0]
    batch = max(1, min(cfg.train.batch_size // topo.replicas, 64))
    gen = torch.Generator().manual_seed(0)
    fmt = memory_format(cfg.train.channels_last)  # the network's
    x = to_format(torch.randn(shape.batch(batch), generator=gen).to(device), fmt)
    y = torch.randint(0, 2, (batch,), generator=gen).to(device)
    pixels = to_format(torch.rand(shape.batch(batch), generator=gen).to(device), fmt) if net.needs_pixels else None
    costs = torch.tensor(measure_costs(copy.deepcopy(net), x, Targets(y, pixels)), dtype=torch.float64)
    dist.all_reduce(costs, group=ctrl)
    return partition((costs / topo.world).tolist(), topo.stages)


def build_rank(cfg: RunConfig, plan: Plan | None = None) -> tuple[Trainer, PipelineStep]:
    """Join the process group and set up this rank's stage (data, network part, links) in the one Trainer.

    BatchNorm across a stage's replicas is torch's SyncBatchNorm with NCCL, the own one (`syncbn`) on gloo.
    """
    rank, world, local_rank = env_rank()
    pcfg = cfg.pipeline
    backend, device, comm_device = pick_device(cfg, pcfg.backend, local_rank)
    timeout = timedelta(seconds=pcfg.timeout_s)
    topo = Topology.build(world, pcfg.replicas, rank)
    if cfg.local.man_momentum > 0 and topo.stages > 1:
        raise ContsupError("MAN's heads follow the next module's first unit, which another stage trains: run MAN "
                           "with one stage (--replicas = the number of ranks) or in one process")
    if cfg.local.cascade and topo.stages > 1:
        raise ContsupError("HPFF's cascade runs module k - 1 again in module k's step, across the stages' cut: run "
                           "it with one stage (--replicas = the number of ranks) or in one process")
    if cfg.train.batch_size % topo.replicas:
        raise ContsupError(f"--batch-size {cfg.train.batch_size} must divide into {topo.replicas} replicas")
    dist.init_process_group(backend, timeout=timeout, rank=rank, world_size=world,
                            device_id=device if backend == "nccl" else None)
    ctrl = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    stage_groups = [dist.new_group(topo.stage_ranks(s), timeout=timeout) for s in range(topo.stages)] \
        if topo.replicas > 1 else None
    data = load_data(cfg)
    check_steps(len(data.train), cfg.train.batch_size)
    info = data.info
    net = build_network(cfg, info.channels, info.num_classes, info.size, plan)
    net = net.to(device, memory_format=memory_format(cfg.train.channels_last))
    ranges = assign_modules(net, cfg, topo, ctrl, device)
    stage = Stage(net, ranges[topo.stage])
    group = stage_groups[topo.stage] if stage_groups else None
    if group is not None:
        for part in stage.parts.values():
            sync_batchnorm(part, group, backend)
    if rank == 0:
        sizes = ",".join(str(len(r)) for r in ranges)
        print(f"pipeline: {topo.replicas} replica(s) x {topo.stages} stage(s), backend {backend}, "
              f"modules per stage {sizes}", flush=True)
    step = PipelineStep(net, stage, topo, Groups(ctrl, group), device, comm_device, pcfg.inflight, cfg.train.bf16,
                        cfg.train.channels_last)
    return rank_trainer(cfg, data, step, reads=topo.first), step


def run_pipeline(cfg: RunConfig, resume: bool = False) -> dict[str, Any] | None:
    """Run this rank's part of a pipelined training job; rank 0 returns the summary, others None.

    Any failure (a bad setting, a dead or silent peer) prints one line naming the rank and ends the
    process with a non-zero status (2 for a user error, 1 otherwise) without waiting on peers.
    """
    rank = os.environ.get("RANK", "?")
    previous = stop_on_interrupt(rank, cfg.out)
    try:
        _, payload = prepare_run(cfg, resume)  # every rank, every check, before joining the group
        plan = plan_from_checkpoint(payload, cfg.out or "", cfg) if payload is not None else None
        if cfg.pipeline.parallel == "local":
            trainer, step = build_rank(cfg, plan)
        else:  # an end-to-end baseline
            trainer, step = build_baseline(cfg, plan)
        if payload is not None:
            check_fit(cfg, trainer.net, payload)
        if cfg.out is not None and step.topo.rank == 0:
            open_run_folder(cfg.out)
        if resume:
            trainer.resume(Path(cfg.out) / CHECKPOINT)  # type: ignore[arg-type]
        summary = trainer.fit()
        dist.barrier(group=step.groups.ctrl)
        dist.destroy_process_group()
        return summary
    except ContsupError as err:
        if not dist.is_initialized() and os.environ.get("RANK") is None:
            raise  # not a distributed run at all: the CLI prints the line
        _leave(f"contsup: error: rank {rank}: {err}", 2)
    except BaseException as err:  # noqa: BLE001 - every failure must end this rank at once
        if os.environ.get("CONTSUP_DEBUG"):
            traceback.print_exc()
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _leave(f"contsup: error: rank {rank}: pipeline stopped, a peer failed or timed out "
               f"({type(err).__name__}: {first[:300]})", 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return None


def stop_on_interrupt(rank: str, out: str | None) -> Any:
    """Make Ctrl-C end this rank at once with status 130 and one line (rank 0's says how to continue), after any
    write into the run folder in progress; every rank of a terminal's run gets it, and a peer blocked on this one
    is released by its exit. Returns the previous handler (None off the main thread, where none is set)."""
    def leave(signum: int, frame: Any) -> None:
        if WRITES["open"]:  # a checkpoint being written: `writing` raises the signal again when it is done
            WRITES["interrupted"] = 1
            return
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one line, however many times it is pressed
        _leave(f"contsup: interrupted: rank {rank} stopped" + (f"; {continue_hint(out)}" if rank in ("0", "?")
                                                                else ""), 130)

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, leave)


def _leave(message: str, code: int) -> None:
    """Print one line and end the process now, without the interpreter's (possibly blocking) clean-up."""
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)
