"""FLOPs of a training step, split into backbone / heads / decoders / context encoders.

Counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and
backward; elementwise ops, BN and pooling count as zero there). The counter names every module that
is called directly by its class; `local_step` calls each module, head, decoder and context directly,
so the top-level names tell the groups apart, and a part called inside them (MAN's copies beside the
decoder) counts with its group. What no group claims (e.g. the contrastive loss's similarity matrix) is
reported as `other`. The counter ends a module's backward once its inputs' gradients are complete, so two
modules that read the same tensor would each count the other's backward: each reads a view of its own
(`ReconObjective`, `MomentumHead.copies`, `CutContext`; tests/profile/test_flops.py).
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
    counts = counter.get_flop_counts()  # per module name, every level: a name's count holds its children's
    names = group_names(net)

    def group(name: str) -> str | None:
        """A counted name's group: its own, or that of the nearest enclosing name the step calls."""
        while name not in names and "." in name:
            name = name.rsplit(".", 1)[0]
        return names.get(name)

    flops = dict.fromkeys(GROUPS, 0)
    taken: list[str] = []  # counted once, at the outermost called module inside a group (MAN's parts are called)
    for name in sorted(counts, key=lambda n: n.count(".")):  # outer names first
        if group(name) is not None and not any(name.startswith(t + ".") for t in taken):
            taken.append(name)
            flops[group(name)] += sum(counts[name].values())
    total = counter.get_total_flops()
    flops["other"] = total - sum(flops.values())
    flops["total"] = total
    return out, flops
