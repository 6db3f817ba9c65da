"""A backbone cut into K modules, with a local head (and decoder) and Context Supply at each cut.

Indices are 0-based throughout the package:
- module k (0 <= k < K) is `blocks[k]`; it reads s_k (s_0 = x) and outputs h_k;
- cut k (0 <= k < K-1) sits after module k (after unit `cuts[k]`): its head `heads[k]` (and decoder
  `decoders[k]`) read h_k and give module k's local loss; its encoders `context[k]` turn h_k into
  s_{k+1} = h_k^c. They run in front of module k+1, so module k+1's loss trains them;
- `last_use[j]` is the last cut that reads s_j (-1: none), so s_j can be dropped once module
  `last_use[j] + 1` has its input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator

import torch
from torch import nn

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.method.balance import memory_model
from contsup.method.context import (
    LOCAL_INITS,
    ContextMode,
    CutContext,
    check_image_encoder,
    init_local_modules,
    parse_mode,
)
from contsup.method.cuts import TABLES, resolve_cuts
from contsup.method.heads import LocalHead
from contsup.method.losses import LOSSES
from contsup.method.recon import Decoder
from contsup.models.chain import Backbone, Shape, probe_shapes

Sources = dict[int, torch.Tensor]  # module inputs s_j by j (s_0 = x) that later cuts still read
Supply = Callable[[int, torch.Tensor, Sources], torch.Tensor]  # (cut k, h_k, sources) -> h_k^c


def check_config(config: LocalConfig) -> None:
    """Fail early with one clear message on a bad local-learning setting."""
    if config.cut_table not in TABLES:
        raise ContsupError(f"unknown cut table {config.cut_table!r}; choose from {', '.join(TABLES)}")
    if isinstance(config.recon, str):
        raise ContsupError(f"recon {config.recon!r} needs the network and dataset: set it through RunConfig")
    LocalHead(8, config.head, 2)  # raises on an unknown head
    LOSSES[config.loss]  # raises on an unknown loss
    parse_mode(config.context, config.modules)
    check_image_encoder(config.image_encoder)
    if config.local_init not in LOCAL_INITS or config.context_scale <= 0:
        raise ContsupError(f"local_init must be one of {', '.join(LOCAL_INITS)} and context_scale > 0 "
                           "(a zero scale would leave the encoders' ReLU dead for good)")


class LocalNetwork(nn.Module):
    """K gradient-isolated modules; `forward` is the plain inference pass h -> h^c -> ... -> logits."""

    def __init__(self, backbone: Backbone, config: LocalConfig, sample: torch.Tensor) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        self.mode: ContextMode = parse_mode(config.context, config.modules)
        units = list(backbone.units)
        self.unit_shapes = probe_shapes(units, sample)
        self.cuts = resolve_cuts(
            backbone.name, backbone.unit_names, config.modules, config.cut_table, config.cuts,
            memory=lambda: memory_model(
                units, backbone.classifier, sample, self.unit_shapes, self.mode, config.head, config.loss,
                self._num_classes(backbone.classifier), config.width, config.widen,
                config.recon is not None, config.image_encoder, config.lean_context,
            ),
        )
        x_shape = Shape(*sample.shape[-3:])
        bounds = [0, *(c + 1 for c in self.cuts), len(units)]
        self.blocks = nn.ModuleList(nn.Sequential(*units[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
        self.classifier = backbone.classifier
        self.backbone_name = backbone.name
        self.unit_names = backbone.unit_names
        # Shapes of the module inputs s_0 = x, s_{k+1} = h_k^c, and of each cut's h_k.
        cut_shapes = [self.unit_shapes[c] for c in self.cuts]
        self.source_shapes = [x_shape, *cut_shapes]
        self.objective = LOSSES[config.loss](self._num_classes(backbone.classifier), int(config.width * config.widen))
        self.heads = nn.ModuleList(
            LocalHead(s.channels, config.head, self.objective.out_dim, config.width, config.widen) for s in cut_shapes
        )
        self.decoders = nn.ModuleList(
            Decoder(s.channels, x_shape.channels, (x_shape.height, x_shape.width)) for s in cut_shapes
        ) if config.recon is not None else nn.ModuleList()
        self.context = nn.ModuleList(
            CutContext(k, self.mode, self.source_shapes, s, config.image_encoder, config.lean_context)
            for k, s in enumerate(cut_shapes)
        )
        init_local_modules(self.heads, self.context, config.local_init, config.context_scale)
        self.last_use = {j: -1 for j in range(len(self.source_shapes))}
        for ctx in self.context:
            for j in ctx.source_ids + ([0] if ctx.image is not None else []):
                self.last_use[j] = max(self.last_use[j], ctx.cut)

    @staticmethod
    def _num_classes(classifier: nn.Module) -> int:
        """Number of classes the classifier predicts (its last Linear layer's out_features)."""
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ContsupError("the classifier needs a final nn.Linear layer to tell the number of classes")
        return linears[-1].out_features

    @property
    def num_modules(self) -> int:
        """K."""
        return len(self.blocks)

    def supply(self, k: int, h: torch.Tensor, sources: Sources) -> torch.Tensor:
        """Module k's (0-based) output, detached and supplied with context, ready for module k+1."""
        return self.context[k](h, sources)

    def keep_source(self, k: int, s: torch.Tensor, sources: Sources) -> None:
        """Record module k's input as source s_k (detached) and drop every source no cut from k on reads."""
        sources[k] = s.detach()
        for j in [j for j in sources if self.last_use[j] < k]:
            del sources[j]

    def walk(
        self, h: torch.Tensor, sources: Sources, modules: range | None = None,
        autocast: torch.autocast | None = None, supply: Supply | None = None,
    ) -> Generator[tuple[int, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The module walk every pass uses: yields (k, module k's input), takes module k's output back.

        `h` is module `modules.start - 1`'s raw output (or x when the walk starts at module 0). Module k's
        input is x for k = 0, else module k-1's output supplied with context (`supply`, default
        `self.supply`, under `autocast`), recorded as source s_k. Drive it with `send` (see `run`);
        returns the last module's output.
        """
        amp = autocast if autocast is not None else contextlib.nullcontext()
        supply = supply or self.supply
        for k in range(self.num_modules) if modules is None else modules:
            if k > 0:
                with amp:
                    h = supply(k - 1, h, sources)
                self.keep_source(k, h, sources)
            h = yield k, h
        return h

    def run(
        self, fn: Callable[[int, torch.Tensor], torch.Tensor], h: torch.Tensor, sources: Sources,
        modules: range | None = None, autocast: torch.autocast | None = None,
    ) -> torch.Tensor:
        """Walk `modules` (default: all) with fn(k, module k's input) -> module k's output; the last output."""
        walk = self.walk(h, sources, modules, autocast)
        try:
            k, h_in = next(walk)
            while True:
                k, h_in = walk.send(fn(k, h_in))
        except StopIteration as done:
            return done.value

    def infer_module(self, k: int, h_in: torch.Tensor) -> torch.Tensor:
        """Module k of the inference pass on its (supplied) input: its output, or the logits if last."""
        h = self.blocks[k](h_in)
        return self.classifier(h) if k == self.num_modules - 1 else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: every module in turn, context supplied at each cut, then the classifier."""
        return self.run(self.infer_module, x, {0: x})

    def module_parameters(self, k: int) -> list[nn.Parameter]:
        """What module k's loss trains: its block, its head (the classifier if last), decoder and cut k-1's encoders."""
        parts: list[nn.Module] = [self.blocks[k], self.classifier if k == self.num_modules - 1 else self.heads[k]]
        parts += [self.decoders[k]] if k < len(self.decoders) else []
        parts += [self.context[k - 1]] if k > 0 else []
        return [p for part in parts for p in part.parameters()]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group: backbone (modules + classifier), heads, decoders, context encoders."""
        return {
            "backbone": [*self.blocks.parameters(), *self.classifier.parameters()],
            "heads": list(self.heads.parameters()),
            "decoders": list(self.decoders.parameters()),
            "context": list(self.context.parameters()),
        }

    def param_counts(self) -> dict[str, int]:
        """Number of parameters in each group, and the total."""
        counts = {g: sum(p.numel() for p in ps) for g, ps in self.param_groups().items()}
        counts["total"] = sum(counts.values())
        return counts

    def describe(self) -> str:
        """A short human-readable summary: modules, cuts, heads and context per cut."""
        names = self.unit_names
        lines = [
            f"{self.backbone_name}: {len(names)} units, K={self.num_modules} modules, "
            f"context {self.mode.name}, head {self.config.head}, loss {self.config.loss}"
            + (", reconstruction on" if self.decoders else ""),
        ]
        start = 0
        for k, block in enumerate(self.blocks):
            end = start + len(block) - 1
            n_params = sum(p.numel() for p in block.parameters())
            line = f"  module {k:2d}: units {start}..{end} {names[start]}..{names[end]}  {n_params:,} params"
            if k < len(self.context):
                ctx = self.context[k]
                s = self.source_shapes[k + 1]
                feeds = [f"s{j}" for j in ctx.source_ids] + (["x:image"] if ctx.image is not None else [])
                line += f" | cut -> {s.channels}x{s.height}x{s.width}, context from {feeds or 'none'}"
            lines.append(line)
            start = end + 1
        return "\n".join(lines)
