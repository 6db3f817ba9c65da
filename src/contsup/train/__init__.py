"""Training loop, schedule, checkpoints and memory readings."""

from contsup.config import TrainConfig
from contsup.device import resolve_device
from contsup.train.checkpoint import load_checkpoint, save_checkpoint
from contsup.train.schedule import lr_at
from contsup.train.steps import LocalStep, Step
from contsup.train.trainer import Loaders, Trainer, evaluate

__all__ = [
    "Loaders", "LocalStep", "Step", "TrainConfig", "Trainer", "evaluate", "load_checkpoint", "lr_at", "resolve_device",
    "save_checkpoint",
]
