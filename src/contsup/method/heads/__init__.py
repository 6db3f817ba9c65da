"""Local heads: what reads a cut's output h_k and gives the local loss its input (docs/method.md, heads).

`registry.py` holds the registries and the `HeadSite` a builder reads; each other file is one family:
the paper's `<a>c<b>f` heads (`plain.py`), AugLocal (`auglocal.py`), token heads (`tokens.py`), and the
wrappers MAN (`man.py`) and PFF (`patches.py`). Importing this package registers them all, in the order
imported here; wrappers apply in that order, innermost first.
"""

# isort: off
from contsup.method.heads import plain, auglocal, tokens  # noqa: F401 - register the heads, in this order
from contsup.method.heads import man, patches  # noqa: F401 - then the wrappers, innermost first: MAN inside PFF
# isort: on
from contsup.method.heads.plain import LocalHead
from contsup.method.heads.registry import (
    HEAD_WRAPPERS,
    HEADS,
    SETTING_CHECKS,
    HeadSite,
    head_kinds,
    layout_kind,
    local_head,
)

__all__ = ["HEADS", "HEAD_WRAPPERS", "SETTING_CHECKS", "HeadSite", "LocalHead", "head_kinds", "layout_kind",
           "local_head"]
