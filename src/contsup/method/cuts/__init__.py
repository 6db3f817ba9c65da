"""Where to cut the chain of units: the rules and the papers' tables (`rules.py`), and the memory model behind
the `balanced` rule (`balance.py`). docs/method.md, networks and where to cut.
"""

from contsup.method.cuts.rules import PAPER_CUTS, TABLES, balanced_cuts, equal_cuts, parse_cut_list, resolve_cuts

__all__ = ["PAPER_CUTS", "TABLES", "balanced_cuts", "equal_cuts", "parse_cut_list", "resolve_cuts"]
