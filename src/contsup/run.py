"""A whole job from one typed config: data, network, trainer. Used by the CLI, presets and sweeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from contsup.data import Dataset, DeviceLoader, load_dataset
from contsup.errors import ContsupError
from contsup.method.heads import ReconWeights
from contsup.method.network import LocalConfig, LocalNetwork
from contsup.models import build_arch
from contsup.train.checkpoint import load_checkpoint
from contsup.train.trainer import TrainConfig, Trainer, evaluate, resolve_device


@dataclass
class DataConfig:
    """Which dataset and how much of it."""

    name: str = "fashion-mnist"
    root: str | None = None  # a directory holding the dataset's files; None: the default places
    download: bool = True
    val_split: int = 0  # training images held out for validation
    train_subset: int = 0  # keep only this many training images (0: all)


@dataclass
class RunConfig:
    """One training job."""

    data: DataConfig = field(default_factory=DataConfig)
    arch: str = "resnet32"
    local: LocalConfig = field(default_factory=LocalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = None  # run folder: checkpoint.pt, metrics.jsonl, summary.json

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of `to_dict`."""
        local = dict(d["local"])
        if local.get("recon") is not None:
            local["recon"] = ReconWeights(**local["recon"])
        if local.get("cuts") is not None:
            local["cuts"] = [tuple(c) if isinstance(c, list) else c for c in local["cuts"]]
        return cls(DataConfig(**d["data"]), d["arch"], LocalConfig(**local), TrainConfig(**d["train"]), d.get("out"))


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
    cfg = RunConfig.from_dict(run)
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
    result = evaluate(net, loader, bar="evaluating on the test set")
    return {"checkpoint": str(checkpoint), "epoch": payload["epoch"], "test_error": result["error"],
            "test_loss": result["loss"], "dataset": cfg.data.name, "arch": cfg.arch,
            "modules": cfg.local.modules, "context": cfg.local.context}
