"""The memory model behind the `balanced` cut rule: what a local step holds, per unit and per cut.

While module k runs its local step it holds the tensors autograd saved in its forward: those of its
units, of its local head (and decoder) at its end, and of the context encoders in front of it. Each is
counted with saved-tensor hooks on a batch of two (in training mode, on copies, so the network's BN
statistics stay untouched), per sample:

- unit u: the bytes first saved while unit u runs in the chain (a storage saved by two units counts once);
- end of module at unit j < last: the local head (and decoder) on unit j's output, its input left out
  (the unit already counted it; infinite where the head refuses to sit); at the last unit: the classifier
  and its loss;
- start of module at unit i > 0: the encoders of a cut after unit i - 1 with a full window, each source
  taken at that cut's shape (exact within a stage; sources from an earlier stage are larger or smaller):
  what they save for backward (nothing but their inputs when lean, contsup.method.context.lean), and the earlier
  module inputs s_j (j >= 1) they read, held through the module for them (the image x is held anyway).

Backward temporaries and the gradients are not in the model; the balance compares modules, and those
scale with the same activations.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from contsup.errors import ContsupError
from contsup.memory import SavedTensorCounter
from contsup.method.context import ContextMode, CutContext
from contsup.method.objective import Objective, Targets
from contsup.models.chain import Shape

BATCH = 2


def saved_per_sample(module: nn.Module, run: Callable[[], object], *inputs: torch.Tensor) -> float:
    """Per-sample bytes saved for backward while `run()` runs, the inputs and module parameters left out."""
    counter = SavedTensorCounter(exclude=module)
    counter.ignore(*inputs)
    with counter():
        out = run()
    del out
    return counter.total / BATCH


def memory_model(
    units: Sequence[nn.Module],
    classifier: nn.Module,
    sample: torch.Tensor,
    shapes: Sequence[Shape],
    mode: ContextMode,
    objective: Callable[[int], Objective],
    image_encoder: str = "paper",
    lean: bool = False,
    ends: Collection[int] | None = None,
) -> tuple[list[float], list[float], list[float]]:
    """(unit bytes, end-of-module bytes, start-of-module bytes) per sample, for `balanced_cuts`.

    `objective(j)` builds the local objective of a cut after unit j (a fresh one, counted on a copy); with
    `ends`, only after those units (the others' end bytes are 0: a fixed cut table needs no others).
    """
    n = len(units)
    x = sample[:1].expand(BATCH, *sample.shape[1:]).clone()
    y = torch.zeros(BATCH, dtype=torch.long)
    targets = Targets(y, torch.rand_like(x))
    x_shape = Shape.of(x)
    chain = copy.deepcopy(nn.Sequential(*units)).train()
    counter = SavedTensorCounter(exclude=chain)
    unit_bytes = []
    h = x
    with counter():
        for unit in chain:
            before = counter.total
            h = unit(h)
            unit_bytes.append((counter.total - before) / BATCH)
    del h
    end_bytes, start_bytes = [], []
    for j, s in enumerate(shapes):
        h = torch.randn(s.batch(BATCH))
        if j == n - 1:
            cls = copy.deepcopy(classifier).train()
            end_bytes.append(saved_per_sample(cls, lambda m=cls, h=h: F.cross_entropy(m(h), y), h))
        elif ends is not None and j not in ends:
            end_bytes.append(0.0)
        else:
            try:
                local = objective(j).train()
            except ContsupError:  # no head of this kind can sit here (a class token that carries nothing yet)
                end_bytes.append(math.inf)  # so the balanced rule never cuts here
                continue
            end_bytes.append(saved_per_sample(local, lambda m=local, h=h: m(h, targets)[0], h))
    start_bytes.append(0.0)
    bound = max(s.numel() for s in [x_shape, *shapes])
    for s in shapes[:-1]:
        if not (mode.window or mode.image):
            start_bytes.append(0.0)
            continue
        ctx = CutContext(mode.window, mode, [x_shape, *[s] * mode.window], s, image_encoder, lean, bound,
                         patch=getattr(units[0], "patch", None)).train()  # a token backbone's patch, as the network
        h = torch.randn(s.batch(BATCH))
        sources = {0: x, **{j: torch.randn_like(h) for j in range(1, mode.window + 1)}}
        held = sum(t.numel() * t.element_size() for j, t in sources.items() if j > 0) / BATCH
        start = saved_per_sample(ctx, lambda m=ctx, h=h, src=sources: m(h, src), h, *sources.values())
        start_bytes.append(held + start)
    return unit_bytes, end_bytes, start_bytes
