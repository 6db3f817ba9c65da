"""FLOPs of a training step, split into backbone / heads / decoders / context encoders.

Counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and
backward; elementwise ops, BN and pooling count as zero there). The counter names every module that
is called directly by its class; `local_step` calls each module, head, decoder and context directly,
so the top-level names tell the groups apart. What no group claims (e.g. the contrastive loss's
similarity matrix) is reported as `other`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode

from contsup.method.network import LocalNetwork

GROUPS = ("backbone", "heads", "decoders", "context")


def group_names(net: LocalNetwork) -> dict[str, str]:
    """Class name of each directly called submodule of a LocalNetwork -> its parameter group."""
    names: dict[str, str] = {}
    for group, modules in (
        ("backbone", [*net.blocks, net.classifier]),
        ("heads", list(net.heads)),
        ("decoders", list(net.decoders)),
        ("context", list(net.context)),
    ):
        for m in modules:
            names.setdefault(type(m).__name__, group)
    return names


def count_flops(net: LocalNetwork, fn: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """Run `fn` (a training step of `net`) and count its FLOPs per group, plus `other` and `total`."""
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    counts = counter.get_flop_counts()
    names = group_names(net)
    flops = dict.fromkeys(GROUPS, 0)
    for name, ops in counts.items():
        if "." not in name and name in names:
            flops[names[name]] += sum(ops.values())
    total = counter.get_total_flops()
    flops["other"] = total - sum(flops.values())
    flops["total"] = total
    return out, flops
