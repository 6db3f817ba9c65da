"""The method: cuts, local heads, Context Supply and the local-learning step."""

from contsup.method.context import ContextMode, CutContext, ImageEncoder, ResidualEncoder, parse_mode
from contsup.method.cuts import PAPER_CUTS, equal_cuts, resolve_cuts
from contsup.method.heads import HEADS, LOSSES, Decoder, LocalHead, ReconWeights, parse_recon, supcon_loss
from contsup.method.network import LocalConfig, LocalNetwork
from contsup.method.step import StepOutput, local_loss, local_step

__all__ = [
    "HEADS", "LOSSES", "PAPER_CUTS", "ContextMode", "CutContext", "Decoder", "ImageEncoder", "LocalConfig",
    "LocalHead", "LocalNetwork", "ReconWeights", "ResidualEncoder", "StepOutput", "equal_cuts", "local_loss",
    "local_step", "parse_mode", "parse_recon", "resolve_cuts", "supcon_loss",
]
