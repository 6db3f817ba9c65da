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

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from contsup.method.network import LocalNetwork
from contsup.method.objective import Objective, TaskObjective

GROUPS = ("backbone", "heads", "decoders", "context")


def group_names(net: LocalNetwork) -> dict[str, str]:
    """Counter name of each submodule a step calls directly, or of an objective's part -> its parameter group.

    The step calls each block, each cut's context and each objective; an objective's head and decoder are
    named `<objective class>.<attribute>` (e.g. `ReconObjective.decoder`), its classifier is the backbone's.
    """
    names: dict[str, str] = {type(b).__name__: "backbone" for b in net.blocks}
    names.update({type(c).__name__: "context" for c in net.context})
    decoders = net.group_modules("decoders")

    def add(obj: nn.Module, prefix: str) -> None:  # a cascade's objectives are taken apart, as in the groups
        for attr, child in obj.named_children():
            if isinstance(child, Objective) and not isinstance(child, TaskObjective):
                add(child, f"{prefix}.{attr}")
            else:
                names[f"{prefix}.{attr}"] = "backbone" if child is net.classifier else \
                    "decoders" if child in decoders else "heads"

    for obj in net.objectives:
        add(obj, type(obj).__name__)
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
        if name in names:
            flops[names[name]] += sum(ops.values())
    total = counter.get_total_flops()
    flops["other"] = total - sum(flops.values())
    flops["total"] = total
    return out, flops
