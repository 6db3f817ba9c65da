"""Local heads: what reads a cut's output h_k and gives the local loss its input (docs/method.md, heads).

`registry.py` holds the registries and the `HeadSite` a builder reads; each other file is one family:
the paper's `<a>c<b>f` heads (`plain.py`), token heads (`tokens.py`), AugLocal (`auglocal.py`), and the
wrappers MAN (`man.py`) and PFF (`patches.py`). Importing this package registers them all; wrappers apply
in the order imported here, innermost first.
"""

from contsup.method.heads import auglocal, man, patches, plain, tokens  # noqa: F401 - register their heads  # noqa: F401 - register the wrappers, MAN inside PFF
from contsup.method.heads.plain import LocalHead
from contsup.method.heads.registry import HEAD_WRAPPERS, HEADS, SETTING_CHECKS, HeadSite, head_kinds, local_head

__all__ = ["HEADS", "HEAD_WRAPPERS", "SETTING_CHECKS", "HeadSite", "LocalHead", "head_kinds", "local_head"]
