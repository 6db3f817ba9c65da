"""A whole job from one RunConfig (see `contsup.config`): data, network, trainer. Used by the CLI and sweeps."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from contsup.checks import check_run, idle_settings
from contsup.config import DataConfig, LocalConfig, PipelineConfig, RunConfig, TrainConfig
from contsup.data import Dataset, DeviceLoader, dataset_info, load_dataset, published_sizes
from contsup.data.specs import DATASETS
from contsup.data.split import seeded_subset
from contsup.device import resolve_device
from contsup.errors import ContsupError
from contsup.method.network import LocalNetwork, Plan
from contsup.method.recon import parse_recon, recon_off
from contsup.models import BACKBONES, build_arch
from contsup.models.reference import REFERENCE, allow, check_allowed, is_reference
from contsup.train.checkpoint import load_checkpoint
from contsup.train.runfolder import (
    CHECKPOINT,
    check_checkpoint_fits,
    check_not_written,
    check_resume,
    check_run_folder,
    check_weights,
    hold_run_folder,
    open_run_folder,
)
from contsup.train.steps import LocalStep
from contsup.train.trainer import Loaders, Trainer, check_trainer, evaluate, run_record

__all__ = [
    "DataConfig", "LocalConfig", "PipelineConfig", "RunConfig", "TrainConfig", "build_network", "evaluate_checkpoint",
    "load_data", "load_run", "make_loaders", "make_trainer", "run_training",
]


def load_data(cfg: RunConfig) -> Dataset:
    """Load the configured dataset."""
    d = cfg.data
    return load_dataset(
        d.name, root=d.root, download=d.download, val_split=d.val_split, train_subset=d.train_subset,
        seed=cfg.train.seed,
    )


def build_network(cfg: RunConfig, channels: int, num_classes: int, size: int, plan: Plan | None = None) -> LocalNetwork:
    """The configured backbone for this input shape, cut and supplied with context, on the CPU.

    `cfg` must have passed `check_run`; `plan` (from a checkpoint) fixes the cuts and reconstruction weights.
    """
    torch.manual_seed(cfg.train.seed)
    try:
        backbone = build_arch(cfg.arch, channels, num_classes, size)
        return LocalNetwork(backbone, cfg.local, torch.zeros(1, channels, size, size), plan, cfg.data.name)
    except (MemoryError, RuntimeError) as err:  # the allocator's refusal (CPU: RuntimeError; CUDA's is one too)
        if not isinstance(err, MemoryError) and "allocate" not in str(err):
            raise
        raise ContsupError(f"this machine's memory cannot hold the network ({describe_run(cfg)}, width "
                           f"{cfg.local.width} x widen {cfg.local.widen:g}): lower --widen, --width, --modules or "
                           "--aux-depth") from None


def make_loaders(cfg: RunConfig, data: Dataset, device: torch.device) -> Loaders:
    """Training (augmented, shuffled), validation, test and test-subset (`eval_subset`) loaders on the device."""
    bs, seed, subset = cfg.train.batch_size, cfg.train.seed, cfg.train.eval_subset
    return Loaders(
        train=DeviceLoader(data.train, data.info, bs, device, train=True, seed=seed),
        test=DeviceLoader(data.test, data.info, bs, device),
        val=DeviceLoader(data.val, data.info, bs, device) if data.val is not None else None,
        test_subset=DeviceLoader(seeded_subset(data.test, subset, seed), data.info, bs, device) if subset else None,
    )


def make_trainer(cfg: RunConfig, data: Dataset, net: LocalNetwork) -> Trainer:
    """The Trainer of a built network and loaded data, every module in this process (on `cfg.train.device`); a
    pipeline schedule (`--parallel gpipe` ...) in one process trains each batch as its micro-batches in turn, the
    schedule's arithmetic (docs/parallel.md)."""
    loaders = make_loaders(cfg, data, resolve_device(cfg.train.device))
    p = cfg.pipeline
    micro_batches = p.micro_batches if p.parallel not in ("local", "ddp") else 1
    step = LocalStep.of(net, cfg.train, loaders.train.denormalize, micro_batches)
    return Trainer(step, loaders, cfg.train, cfg.out, record=run_record(cfg, data.info, net))


def check_steps(train_images: int, batch_size: int) -> None:
    """Refuse a run whose epochs would hold no training step (the loader drops the last partial batch)."""
    if train_images < batch_size:
        raise ContsupError(f"the training set holds {train_images} images, fewer than one batch of {batch_size}: "
                           "no training step would run; lower --batch-size or raise --train-subset")


def check_sizes(cfg: RunConfig) -> None:
    """The dataset as published holds what the settings take from it: the validation split, the training
    subset, one training batch and the test subset (checked again on the loaded data)."""
    d, t = cfg.data, cfg.train
    n_train, n_test = published_sizes(d.name)
    if d.val_split >= n_train:
        raise ContsupError(f"val_split={d.val_split} leaves no training images ({d.name} has {n_train})")
    if d.train_subset > n_train - d.val_split:
        raise ContsupError(f"train_subset={d.train_subset} exceeds the {n_train - d.val_split} training images "
                           f"of {d.name}")
    train_images = d.train_subset or n_train - d.val_split
    check_steps(train_images, t.batch_size)
    if t.eval_subset > n_test:
        raise ContsupError(f"eval_subset={t.eval_subset} exceeds the {n_test} test images of {d.name}")
    check_trainer(t, train_images // t.batch_size, cfg.local, cfg.pipeline)  # the Trainer's checks, before any work


def check_settings(cfg: RunConfig) -> None:
    """Every setting of a run, and the sizes it takes from its dataset (`--print-config` checks this much)."""
    check_run(cfg)
    check_sizes(cfg)


def known_run(run: dict[str, Any]) -> bool:
    """Whether a stored run names a registered backbone and a known dataset (else `contsup` cannot rebuild it)."""
    data = run.get("data")
    arch = str(run.get("arch"))
    if is_reference(arch):
        return REFERENCE.fullmatch(arch) is not None and isinstance(data, dict) and data.get("name") in DATASETS
    try:
        BACKBONES[arch]
    except ContsupError:
        return False
    return isinstance(data, dict) and data.get("name") in DATASETS


def run_from_checkpoint(payload: dict[str, Any], path: str | Path) -> RunConfig:
    """The checked run configuration stored in a checkpoint's metadata (its dataset must be the known one)."""
    meta = payload["meta"]
    unknown = sorted(str(k) for k in set(meta) - {"run", "dataset", "plan", "pipeline", "stages", "replicas", "api"})
    if unknown:
        raise ContsupError(f"{path}: malformed checkpoint metadata (unknown key(s) {', '.join(unknown)})")
    if "run" not in meta:
        raise ContsupError(f"{path} holds no run configuration")
    run = meta["run"]
    if meta.get("api") is True and isinstance(run, dict) and not known_run(run):
        raise ContsupError(f"{path} was trained through the Python API on a network or dataset of its own: "
                           "rebuild that network in Python and load the checkpoint's weights "
                           "(contsup.train.load_checkpoint(path)['model'])")
    try:
        cfg = RunConfig.from_dict(run, "metadata")
        check_run(cfg)
    except (ContsupError, TypeError, ValueError, AttributeError) as err:  # values of any type: one line each
        raise ContsupError(f"{path}: malformed checkpoint {err}") from None
    if is_reference(cfg.arch):
        check_allowed(cfg.arch, str(path))  # the file names the user's code: imported only if the user names it too
    info = asdict(dataset_info(cfg.data.name))
    stored = meta.get("dataset")
    if not isinstance(stored, dict) or any(stored.get(k) != info[k] for k in ("channels", "size", "num_classes")):
        raise ContsupError(f"{path}: malformed checkpoint metadata (its dataset description is not {cfg.data.name}'s)")
    return cfg


def plan_from_checkpoint(payload: dict[str, Any], path: str | Path, cfg: RunConfig) -> Plan:
    """The cuts and reconstruction weights a checkpoint's network was built with (checked plain data)."""
    plan = payload["meta"].get("plan")
    try:
        cuts, recon = plan["cuts"], plan["recon"]  # type: ignore[index]
        ok = isinstance(cuts, list) and len(cuts) == cfg.local.modules - 1 and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 100_000 for c in cuts) and (
            recon is None or isinstance(recon, str))
    except (TypeError, KeyError):
        ok = False
    if not ok:
        raise ContsupError(f"{path}: malformed checkpoint metadata (its plan must list {cfg.local.modules - 1} "
                           "cut units and the reconstruction weights)")
    if (recon is None) != recon_off(cfg.local.recon):
        raise ContsupError(f"{path}: malformed checkpoint metadata (its plan and settings disagree on recon)")
    return Plan(tuple(cuts), parse_recon(recon, "", None, cfg.local.modules, False) if recon else None)


def describe_run(cfg: RunConfig) -> str:
    """The run's network in a few words: arch, K and (for local learning) context and head."""
    if cfg.local.modules == 1:
        return f"{cfg.arch}, end-to-end"
    return f"{cfg.arch}, K={cfg.local.modules}, context {cfg.local.context}, head {cfg.local.head}"


def prepare_run(cfg: RunConfig, resume: bool) -> tuple[torch.device, dict[str, Any] | None]:
    """Every check that needs no data, before anything is loaded or written: (the device, on resume the
    checked checkpoint). A run, a pipeline rank and `--dry-run` all pass here."""
    check_run(cfg)
    check_run_folder(cfg.out, resume)
    device = resolve_device(cfg.train.device)
    check_sizes(cfg)
    if not resume:
        return device, None
    path = Path(cfg.out) / CHECKPOINT  # type: ignore[arg-type]
    payload = load_checkpoint(path)
    stored = run_from_checkpoint(payload, path)
    idle = set(idle_settings(stored.local, stored.train, stored.pipeline)) & set(
        idle_settings(cfg.local, cfg.train, cfg.pipeline))
    check_resume(path, payload, stored.to_dict(), cfg.to_dict(), cfg.train.epochs, idle)
    return device, payload


def check_fit(cfg: RunConfig, net: LocalNetwork, payload: dict[str, Any]) -> None:
    """The checkpoint's weights and optimizer state fit the built network and the run's optimizer settings."""
    check_checkpoint_fits(net, payload, cfg.train, cfg.out or "",
                          f"the network its metadata describes ({describe_run(cfg)})")


def run_training(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train the configured job (continuing from its run folder with `resume`); returns the summary.

    The run folder's write lock is held from before its checks to the end. Resuming a run killed
    between its last checkpoint and its summary trains nothing: the trainer writes the summary.
    """
    check_run(cfg)
    if is_reference(cfg.arch):
        allow(cfg.arch)  # the user named it: resuming may rebuild it from the checkpoint
    check_run_folder(cfg.out, resume)  # a refused run creates nothing, not even the lock
    with hold_run_folder(cfg.out):
        return _train_locked(cfg, resume)


def _train_locked(cfg: RunConfig, resume: bool) -> dict[str, Any]:
    """`run_training` with the run folder's lock held."""
    _, payload = prepare_run(cfg, resume)
    data = load_data(cfg)
    check_steps(len(data.train), cfg.train.batch_size)
    info = data.info
    plan = plan_from_checkpoint(payload, cfg.out or "", cfg) if payload is not None else None
    net = build_network(cfg, info.channels, info.num_classes, info.size, plan)
    if payload is not None:
        check_fit(cfg, net, payload)
    # before the folder: a test subset larger than the test set is refused
    trainer = make_trainer(cfg, data, net)
    if cfg.out is not None:
        open_run_folder(cfg.out)
    if resume:
        trainer.resume(Path(cfg.out) / CHECKPOINT)  # type: ignore[arg-type]
    summary = trainer.fit()
    assert summary is not None  # one process is the main process
    return summary


def load_run(checkpoint: str | Path, device: str = "cpu", data_dir: str | None = None,
             arch: str | None = None) -> tuple[RunConfig, LocalNetwork, dict[str, Any]]:
    """Rebuild a trained network from its checkpoint: (config, network with weights, payload).

    The config's data comes from `data_dir` (or the default places), never downloaded, and it has no
    run folder: a checkpoint decides nothing about where contsup reads or writes. A network made by the
    user's code (`package.module:function`) is rebuilt only when `arch` names that code again.
    """
    if arch is not None:
        allow(arch)
    check_not_written(checkpoint if Path(checkpoint).is_dir() else Path(checkpoint).parent)
    payload = load_checkpoint(checkpoint)
    cfg = run_from_checkpoint(payload, checkpoint)
    cfg = replace(cfg, data=replace(cfg.data, root=data_dir, download=False), out=None)
    info = dataset_info(cfg.data.name)
    plan = plan_from_checkpoint(payload, checkpoint, cfg)
    with torch.device("meta"):  # the metadata's network, shapes only: checked against the weights before allocating
        check_weights(build_network(cfg, info.channels, info.num_classes, info.size, plan), payload["model"],
                      checkpoint, f"the network its metadata describes ({describe_run(cfg)})")
    net = build_network(cfg, info.channels, info.num_classes, info.size, plan)
    net.load_state_dict(payload["model"])
    return cfg, net.to(resolve_device(device)), payload


def evaluate_checkpoint(checkpoint: str | Path, device: str = "auto", batch_size: int = 1024,
                        data_dir: str | None = None, arch: str | None = None) -> dict[str, Any]:
    """Test error and loss of a saved network on its dataset's test split (read from `data_dir`, never fetched);
    `arch` names the user's model code where the network came from it (`load_run`)."""
    cfg, net, payload = load_run(checkpoint, device, data_dir, arch)
    data = load_data(cfg)
    loader = DeviceLoader(data.test, data.info, batch_size, next(net.parameters()).device)
    result = evaluate(net, loader, cfg.train.bf16, cfg.train.channels_last, bar="evaluating on the test set")
    return {"checkpoint": str(checkpoint), "epoch": payload["epoch"], "test_error": result["error"],
            "test_loss": result["loss"], "dataset": cfg.data.name, "arch": cfg.arch,
            "modules": cfg.local.modules, "context": cfg.local.context if cfg.local.modules > 1 else None,
            "network": describe_run(cfg)}
