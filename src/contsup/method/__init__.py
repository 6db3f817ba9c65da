"""The method: cuts, local heads and losses, Context Supply, the network and the local-learning step."""

from contsup.config import LocalConfig, ReconWeights
from contsup.method.context import CONTEXT_MODES, ContextMode, CutContext, ImageEncoder, ResidualEncoder, parse_mode
from contsup.method.cuts import PAPER_CUTS, equal_cuts, resolve_cuts
from contsup.method.heads import HEADS, LocalHead
from contsup.method.losses import LOSSES, supcon_loss
from contsup.method.network import LocalNetwork
from contsup.method.recon import Decoder, parse_recon
from contsup.method.step import StepOutput, local_loss, local_step, modules_step

__all__ = [
    "CONTEXT_MODES", "HEADS", "LOSSES", "PAPER_CUTS", "ContextMode", "CutContext", "Decoder", "ImageEncoder",
    "LocalConfig", "LocalHead", "LocalNetwork", "ReconWeights", "ResidualEncoder", "StepOutput", "equal_cuts",
    "local_loss", "local_step", "modules_step", "parse_mode", "parse_recon", "resolve_cuts", "supcon_loss",
]
