"""The method, in rooms: `heads/` (what trains each cut), `context/` (Context Supply), `cuts/` (where to cut),
and the engine here: `network.py` (the cut network), `objective.py` (what trains module k), `local_step.py`
(one batch), `losses.py`, `recon.py` (InfoPro's term), `settings.py` (the settings checked). Nothing here
imports from above `contsup.method` (docs/method.md, the code's layout).
"""

from contsup.config import LocalConfig
from contsup.method.context import CONTEXT_MODES, ContextMode, CutContext, ImageEncoder, ResidualEncoder, parse_mode
from contsup.method.cuts import PAPER_CUTS, equal_cuts, resolve_cuts
from contsup.method.heads import HEAD_WRAPPERS, HEADS, HeadSite, LocalHead
from contsup.method.local_step import StepOutput, local_step, modules_step
from contsup.method.losses import LOSSES, supcon_loss
from contsup.method.network import LocalNetwork, Plan
from contsup.method.objective import Objective, Targets
from contsup.method.recon import Decoder, ReconWeights, parse_recon

__all__ = [
    "CONTEXT_MODES", "HEADS", "HEAD_WRAPPERS", "LOSSES", "PAPER_CUTS", "ContextMode", "CutContext", "Decoder",
    "HeadSite", "ImageEncoder", "LocalConfig", "LocalHead", "LocalNetwork", "Objective", "Plan", "ReconWeights",
    "ResidualEncoder", "StepOutput", "Targets",
    "equal_cuts", "local_step", "modules_step", "parse_mode", "parse_recon", "resolve_cuts", "supcon_loss",
]
