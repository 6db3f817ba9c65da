"""What every rank of a distributed run sets up alike: its place (torchrun's environment), its device and
its one Trainer (`contsup.distributed.launch` for the local-learning pipeline, `baselines` for the others)."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

from contsup.config import RunConfig
from contsup.data import Dataset
from contsup.device import activate
from contsup.distributed.pipeline import PipelineStep
from contsup.errors import ContsupError
from contsup.run import make_loaders
from contsup.train.trainer import Loaders, Trainer, run_record


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; a clear error outside torchrun."""
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ContsupError(
            f"--pipeline runs under torchrun ({', '.join(missing)} not set): "
            "torchrun --nproc-per-node P -m contsup train ... --pipeline"
        )
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(cfg: RunConfig, backend: str, local_rank: int) -> tuple[str, torch.device, torch.device]:
    """(backend, compute device, device that messages travel through) for this rank.

    On CUDA every rank of a node gets its own GPU (`cuda:LOCAL_RANK`, made current): more ranks on a node
    than GPUs, or one `cuda:N` named for all ranks, is refused in one line rather than shared silently.
    """
    name = cfg.train.device
    cuda = torch.cuda.is_available() and (name == "auto" or name.startswith("cuda"))
    if backend == "auto":
        backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and not cuda:
        raise ContsupError("--backend nccl needs CUDA devices")
    if not cuda:
        return backend, torch.device("cpu"), torch.device("cpu")
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_ranks > torch.cuda.device_count() or (":" in name and local_ranks > 1):
        raise ContsupError(f"{local_ranks} ranks on this node and {torch.cuda.device_count()} CUDA device(s): "
                           "a pipeline gives every rank its own GPU; start at most one rank per GPU with --device cuda")
    device = activate(torch.device(name if ":" in name else f"cuda:{local_rank}"))
    return backend, device, device if backend == "nccl" else torch.device("cpu")  # gloo: through host memory


def rank_trainer(cfg: RunConfig, data: Dataset, step: PipelineStep, reads: bool) -> Trainer:
    """The one Trainer of a rank: its step on the step's view of the loaders (`step.loader`: the data where the
    rank `reads` it, else what arrives), the run's record with the pipeline's shape."""
    own = make_loaders(cfg, data, step.device) if reads else None

    def view(name: str, train: bool = False) -> Iterable:
        return step.loader(getattr(own, name) if own is not None else None, train)

    loaders = Loaders(view("train", train=True), view("test"), view("val") if data.val is not None else None,
                      view("test_subset") if cfg.train.eval_subset else None,
                      steps_per_epoch=len(data.train) // cfg.train.batch_size)  # training drops the last
    shape = {"stages": step.topo.stages, "replicas": step.topo.replicas}
    return Trainer(step, loaders, cfg.train, cfg.out, record=run_record(cfg, data.info, step.net, pipeline=shape))
