"""contsup: memory-efficient greedy local learning with Context Supply."""

from contsup.errors import ContsupError
from contsup.method import LocalConfig, LocalNetwork, ReconWeights, local_step
from contsup.models import Backbone, resnet
from contsup.train import Loaders, LocalStep, TrainConfig, Trainer, evaluate

__version__ = "0.1.0"
__all__ = [
    "Backbone", "ContsupError", "Loaders", "LocalConfig", "LocalNetwork", "LocalStep", "ReconWeights", "TrainConfig",
    "Trainer", "evaluate", "local_step", "resnet",
]
