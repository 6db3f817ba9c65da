"""A network's local-learning settings checked before anything is built (`check_local`).

Types come from the schema (`contsup.config.check_types`); ranges and names are checked here against the
registries; each head or wrapper checks its own settings (`heads.SETTING_CHECKS`). `contsup.checks` adds the
run-level checks around this one.
"""

from __future__ import annotations

import re
from typing import Any

from contsup.config import check_types
from contsup.errors import ContsupError, check_float, check_int
from contsup.method.context import parse_mode
from contsup.method.cuts import TABLES, parse_cut_list
from contsup.method.heads import HEADS, SETTING_CHECKS
from contsup.method.losses import LOSSES
from contsup.method.recon import parse_recon

MODULE_PATH = re.compile(r"[A-Za-z_][\w]*(\.\w+)*")  # a module path naming a cut of a traced model


def check_local(local: Any) -> None:
    """Every field of a LocalConfig: types, ranges, and names against the registries (heads, losses, ...)."""
    check_types(local)
    check_int("modules", local.modules, 1, 10_000)
    check_float("context_scale", local.context_scale, 0.0, 1e3, low_open=True)
    check_int("width", local.width, 1, 65_536)
    for check in SETTING_CHECKS:
        check(local)
    if local.checkpoint_segments != "sqrt":
        check_int("checkpoint_segments", local.checkpoint_segments, 0, 100_000)
    check_float("widen", local.widen, 0.0, 64.0, low_open=True)
    if local.width * local.widen > 65_536:  # a head this wide would take gigabytes before any weight is checked
        raise ContsupError(f"width x widen must be at most 65536, got {local.width} x {local.widen:g}")
    if local.cut_table not in TABLES:
        raise ContsupError(f"unknown cut table {local.cut_table!r}; choose from {', '.join(TABLES)}")
    if local.cuts is not None and local.cuts.strip() in TABLES:  # the command line moves it (--cuts balanced)
        rule = local.cuts.strip()
        raise ContsupError(f"cuts {local.cuts!r} names a cut rule, which cut_table takes: LocalConfig(cut_table="
                           f"{rule!r}) (the command line's --cuts {rule} sets it)")
    if local.cuts is not None and not all(MODULE_PATH.fullmatch(c.strip()) for c in local.cuts.split(",")):
        parse_cut_list(local.cuts)  # not module paths (a traced model's cuts): indices or stage.block pairs
    if local.cuts is not None and not [c for c in local.cuts.split(",") if c.strip()]:
        raise ContsupError(f"cuts {local.cuts!r} lists no cut; give unit indices (3,7,11), stage.block pairs "
                           "(1.2,2.1), module paths or a cut rule (balanced), or leave it out")
    for kind in local.head.split(","):
        HEADS[kind.strip()]  # raises on an unknown head
    if "," in local.head and local.cut_table == "balanced":
        raise ContsupError("the balanced cut rule needs one head kind for every cut")
    LOSSES[local.loss]  # raises on an unknown loss
    parse_mode(local.context, local.modules)
    check_int("recon_patches", local.recon_patches, 1, 16)
    check_float("cascade", local.cascade, 0.0, 1.0, high_open=True)
    if local.cascade and local.modules < 2:
        raise ContsupError("HPFF's cascade runs each module's loss through the module before it: it needs K >= 2")
    if local.cascade and "balanced" in (local.cut_table, local.cuts):
        raise ContsupError("the balanced cut rule weighs modules trained alone; HPFF's cascade trains two at a "
                           "time: choose the cuts (equal, equal-units or an explicit list)")
    if local.recon is not None and local.recon.lower() != "paper":  # `paper` needs the network and dataset
        parse_recon(local.recon, "", None, local.modules, False)
