"""The method: cuts, local objectives (heads, losses, reconstruction), Context Supply, the network and the step."""

from contsup.config import LocalConfig
from contsup.method import auglocal, tokens  # noqa: F401 - register their heads
from contsup.method.context import CONTEXT_MODES, ContextMode, CutContext, ImageEncoder, ResidualEncoder, parse_mode
from contsup.method.cuts import PAPER_CUTS, equal_cuts, resolve_cuts
from contsup.method.heads import HEADS, LocalHead
from contsup.method.local_step import StepOutput, local_step, modules_step
from contsup.method.losses import LOSSES, supcon_loss
from contsup.method.network import LocalNetwork, Plan
from contsup.method.objective import Objective, Targets
from contsup.method.recon import Decoder, ReconWeights, parse_recon

__all__ = [
    "CONTEXT_MODES", "HEADS", "LOSSES", "PAPER_CUTS", "ContextMode", "CutContext", "Decoder", "ImageEncoder",
    "LocalConfig", "LocalHead", "LocalNetwork", "Objective", "Plan", "ReconWeights", "ResidualEncoder", "StepOutput",
    "Targets",
    "equal_cuts", "local_step", "modules_step", "parse_mode", "parse_recon", "resolve_cuts", "supcon_loss",
]
