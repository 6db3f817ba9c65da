"""A whole job from one RunConfig (see `contsup.config`): data, network, trainer. Used by the CLI and sweeps."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from contsup.checks import check_run
from contsup.config import DataConfig, LocalConfig, PipelineConfig, RunConfig, TrainConfig
from contsup.data import Dataset, DeviceLoader, dataset_info, load_dataset
from contsup.errors import ContsupError
from contsup.method.network import LocalNetwork
from contsup.models import build_arch
from contsup.train.checkpoint import load_checkpoint
from contsup.train.runfolder import (
    CHECKPOINT,
    check_not_written,
    check_optimizer,
    check_resume,
    check_run_folder,
    check_weights,
    hold_run_folder,
    open_run_folder,
)
from contsup.train.steps import resolve_device
from contsup.train.trainer import Trainer, evaluate

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


def build_network(cfg: RunConfig, channels: int, num_classes: int, size: int) -> LocalNetwork:
    """The configured backbone for this input shape, cut and supplied with context, on the CPU."""
    check_run(cfg)
    torch.manual_seed(cfg.train.seed)
    backbone = build_arch(cfg.arch, channels, num_classes)
    return LocalNetwork(backbone, cfg.local, torch.zeros(1, channels, size, size))


def make_loaders(cfg: RunConfig, data: Dataset, device: torch.device) -> dict[str, DeviceLoader | None]:
    """Training (augmented, shuffled), validation and test loaders on the device."""
    bs, seed = cfg.train.batch_size, cfg.train.seed
    return {
        "train": DeviceLoader(data.train, data.info, bs, device, train=True, seed=seed),
        "val": DeviceLoader(data.val, data.info, bs, device) if data.val is not None else None,
        "test": DeviceLoader(data.test, data.info, bs, device),
    }


def make_trainer(cfg: RunConfig, data: Dataset, net: LocalNetwork) -> Trainer:
    """A Trainer for a built network and loaded data."""
    device = resolve_device(cfg.train.device)
    loaders = make_loaders(cfg, data, device)
    return Trainer(
        net, loaders["train"], loaders["test"], cfg.train, cfg.out, val_loader=loaders["val"],
        meta={"run": cfg.to_dict(), "dataset": asdict(data.info)},
    )


def check_steps(train_images: int, batch_size: int) -> None:
    """Refuse a run whose epochs would hold no training step (the loader drops the last partial batch)."""
    if train_images < batch_size:
        raise ContsupError(f"the training set holds {train_images} images, fewer than one batch of {batch_size}: "
                           "no training step would run; lower --batch-size or raise --train-subset")


def run_from_checkpoint(payload: dict[str, Any], path: str | Path) -> RunConfig:
    """The checked run configuration stored in a checkpoint's metadata (its dataset must be the known one)."""
    meta = payload["meta"]
    unknown = sorted(str(k) for k in set(meta) - {"run", "dataset", "pipeline", "stages", "replicas"})
    if unknown:
        raise ContsupError(f"{path}: malformed checkpoint metadata (unknown key(s) {', '.join(unknown)})")
    if "run" not in meta:
        raise ContsupError(f"{path} holds no run configuration (trained through the Python API?)")
    run = meta["run"]
    if isinstance(run, dict) and isinstance(run.get("local"), dict) and run["local"].get("extra") == {}:
        run = {**run, "local": {k: v for k, v in run["local"].items() if k != "extra"}}  # written before the schema
    try:
        cfg = RunConfig.from_dict(run, "metadata")
        check_run(cfg)
    except (ContsupError, TypeError, ValueError, AttributeError) as err:  # values of any type: one line each
        raise ContsupError(f"{path}: malformed checkpoint {err}") from None
    info = asdict(dataset_info(cfg.data.name))
    stored = meta.get("dataset")
    if not isinstance(stored, dict) or any(stored.get(k) != info[k] for k in ("channels", "size", "num_classes")):
        raise ContsupError(f"{path}: malformed checkpoint metadata (its dataset description is not {cfg.data.name}'s)")
    return cfg


def _describe(cfg: RunConfig) -> str:
    return f"{cfg.arch}, K={cfg.local.modules}, context {cfg.local.context}, head {cfg.local.head}"


def prepare_run(cfg: RunConfig, resume: bool) -> dict[str, Any] | None:
    """Every check that needs no data, before anything is loaded or written; on resume, the checked checkpoint."""
    check_run(cfg)
    check_run_folder(cfg.out, resume)
    resolve_device(cfg.train.device)
    if not resume:
        return None
    path = Path(cfg.out) / CHECKPOINT  # type: ignore[arg-type]
    payload = load_checkpoint(path)
    check_resume(path, payload, run_from_checkpoint(payload, path).to_dict(), cfg.to_dict(), cfg.train.epochs)
    return payload


def check_fit(cfg: RunConfig, net: LocalNetwork, payload: dict[str, Any]) -> None:
    """The checkpoint's weights and optimizer state fit the built network and the run's SGD settings."""
    check_weights(net, payload["model"], cfg.out or "", _describe(cfg))
    hyper = {"momentum": cfg.train.momentum, "weight_decay": cfg.train.weight_decay, "nesterov": True}
    check_optimizer(payload["optimizer"], list(net.parameters()), hyper, cfg.out or "")


def run_training(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train the configured job (continuing from its run folder with `resume`); returns the summary.

    The run folder's write lock is held from before its checks to the end. Resuming a run killed
    between its last checkpoint and its summary trains nothing: the trainer writes the summary.
    """
    check_run(cfg)
    check_run_folder(cfg.out, resume)  # a refused run creates nothing, not even the lock
    with hold_run_folder(cfg.out):
        return _train_locked(cfg, resume)


def _train_locked(cfg: RunConfig, resume: bool) -> dict[str, Any]:
    payload = prepare_run(cfg, resume)
    data = load_data(cfg)
    check_steps(len(data.train), cfg.train.batch_size)
    info = data.info
    net = build_network(cfg, info.channels, info.num_classes, info.size)
    if payload is not None:
        check_fit(cfg, net, payload)
    if cfg.out is not None:
        open_run_folder(cfg.out)
    trainer = make_trainer(cfg, data, net)
    if resume:
        trainer.resume(Path(cfg.out) / CHECKPOINT)  # type: ignore[arg-type]
    summary = trainer.fit()
    assert summary is not None  # one process is the main process
    return summary


def load_run(checkpoint: str | Path, device: str = "cpu",
             data_dir: str | None = None) -> tuple[RunConfig, LocalNetwork, dict[str, Any]]:
    """Rebuild a trained network from its checkpoint: (config, network with weights, payload).

    The config's data comes from `data_dir` (or the default places), never downloaded, and it has no
    run folder: a checkpoint decides nothing about where contsup reads or writes.
    """
    check_not_written(checkpoint if Path(checkpoint).is_dir() else Path(checkpoint).parent)
    payload = load_checkpoint(checkpoint)
    cfg = run_from_checkpoint(payload, checkpoint)
    cfg = replace(cfg, data=replace(cfg.data, root=data_dir, download=False), out=None)
    info = dataset_info(cfg.data.name)
    with torch.device("meta"):  # the metadata's network, shapes only: checked against the weights before allocating
        check_weights(build_network(cfg, info.channels, info.num_classes, info.size), payload["model"], checkpoint,
                      _describe(cfg))
    net = build_network(cfg, info.channels, info.num_classes, info.size)
    net.load_state_dict(payload["model"])
    return cfg, net.to(resolve_device(device)), payload


def evaluate_checkpoint(checkpoint: str | Path, device: str = "auto", batch_size: int = 1024,
                        data_dir: str | None = None) -> dict[str, Any]:
    """Test error and loss of a saved network on its dataset's test split (read from `data_dir`, never fetched)."""
    dev = resolve_device(device)
    cfg, net, payload = load_run(checkpoint, device, data_dir)
    data = load_data(cfg)
    loader = DeviceLoader(data.test, data.info, batch_size, dev)
    result = evaluate(net, loader, bar="evaluating on the test set")
    return {"checkpoint": str(checkpoint), "epoch": payload["epoch"], "test_error": result["error"],
            "test_loss": result["loss"], "dataset": cfg.data.name, "arch": cfg.arch,
            "modules": cfg.local.modules, "context": cfg.local.context}
