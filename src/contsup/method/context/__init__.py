"""Context Supply: which earlier information each cut reads (`modes.py`), the encoders that bring it to the
cut's shape (`conv.py` for feature maps, with their memory-lean forward in `lean.py`; `tokens.py` for token
cuts), and the sum at a cut (`supply.py`, `CutContext`). docs/method.md, context.
"""

from contsup.method.context.conv import ConvEncoder, ImageEncoder, ResidualEncoder, adaptive_pool
from contsup.method.context.modes import CONTEXT_MODES, ContextMode, parse_mode
from contsup.method.context.supply import IMAGE_ENCODERS, LOCAL_INITS, CutContext, init_local_modules
from contsup.method.context.tokens import TokenImageEncoder, TokenResidualEncoder, token_encoder

__all__ = [
    "CONTEXT_MODES", "IMAGE_ENCODERS", "LOCAL_INITS", "ContextMode", "ConvEncoder", "CutContext", "ImageEncoder",
    "ResidualEncoder", "TokenImageEncoder", "TokenResidualEncoder", "adaptive_pool", "init_local_modules",
    "parse_mode", "token_encoder",
]
