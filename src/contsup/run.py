"""A whole job from one RunConfig (see `contsup.config`): data, network, trainer. Used by the CLI and sweeps."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from contsup.config import DataConfig, LocalConfig, PipelineConfig, RunConfig, TrainConfig
from contsup.data import Dataset, DeviceLoader, load_dataset
from contsup.errors import ContsupError
from contsup.method.network import LocalNetwork
from contsup.models import build_arch
from contsup.train.checkpoint import load_checkpoint
from contsup.train.trainer import Trainer, evaluate, resolve_device

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


def run_training(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train the configured job (continuing from its run folder with `resume`); returns the summary."""
    if resume:
        if cfg.out is None:
            raise ContsupError("--resume needs a run folder (--out)")
        if not (Path(cfg.out) / "checkpoint.pt").is_file():
            raise ContsupError(f"nothing to resume: no checkpoint.pt in {cfg.out}")
    data = load_data(cfg)
    info = data.info
    trainer = make_trainer(cfg, data, build_network(cfg, info.channels, info.num_classes, info.size))
    if resume:
        trainer.resume(Path(cfg.out) / "checkpoint.pt")  # type: ignore[arg-type]
    return trainer.fit()


def load_run(checkpoint: str | Path, device: str = "cpu") -> tuple[RunConfig, LocalNetwork, dict[str, Any]]:
    """Rebuild a trained network from its checkpoint: (config, network with weights, payload)."""
    payload = load_checkpoint(checkpoint)
    run = payload.get("meta", {}).get("run")
    if run is None:
        raise ContsupError(f"{checkpoint} holds no run configuration (trained through the Python API?)")
    if run.get("local", {}).get("extra") == {}:  # an empty field that checkpoints before the schema carried
        run = {**run, "local": {k: v for k, v in run["local"].items() if k != "extra"}}
    try:
        cfg = RunConfig.from_dict(run)
    except ContsupError as err:
        raise ContsupError(f"{checkpoint}: its run configuration does not fit this contsup: {err}") from None
    info = payload["meta"]["dataset"]
    net = build_network(cfg, info["channels"], info["num_classes"], info["size"])
    net.load_state_dict(payload["model"])
    return cfg, net.to(resolve_device(device)), payload


def evaluate_checkpoint(checkpoint: str | Path, device: str = "auto", batch_size: int = 1024) -> dict[str, Any]:
    """Test error and loss of a saved network on its dataset's test split."""
    cfg, net, payload = load_run(checkpoint, device)
    data = load_data(cfg)
    dev = resolve_device(device)
    loader = DeviceLoader(data.test, data.info, batch_size, dev)
    result = evaluate(net, loader)
    return {"checkpoint": str(checkpoint), "epoch": payload["epoch"], "test_error": result["error"],
            "test_loss": result["loss"], "dataset": cfg.data.name, "arch": cfg.arch,
            "modules": cfg.local.modules, "context": cfg.local.context}
