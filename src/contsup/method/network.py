"""A backbone cut into K modules, with a local head (and decoder) and Context Supply at each cut."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from contsup.errors import ContsupError
from contsup.method.balance import memory_model
from contsup.method.context import ContextMode, CutContext, check_image_encoder, parse_mode
from contsup.method.cuts import TABLES, resolve_cuts
from contsup.method.heads import Decoder, LocalHead, ReconWeights, head_out_dim
from contsup.models.chain import Backbone, Shape, probe_shapes


@dataclass
class LocalConfig:
    """How to cut a network and train it locally (defaults: the paper's ContSup setting)."""

    modules: int = 4  # K; 1 is end-to-end training
    context: str = "R1E"  # R0 (plain greedy local learning), E, Rn, RnE
    head: str = "1c2f"  # local head shape <a>c<b>f (spec §3)
    loss: str = "softmax"  # softmax | contrast
    width: int = 128  # hidden width W of the heads
    widen: float = 1.0  # multiplies the heads' widths
    cut_table: str = "auto"  # auto | equal-units | balanced (rule) | a paper table (equal, balanced-cifar10, ...)
    cuts: Sequence[int] | Sequence[tuple[int, int]] | None = None  # explicit cuts override the table
    recon: ReconWeights | None = None  # InfoPro reconstruction term; None: task loss only
    image_encoder: str = "paper"  # paper | pooled (pool the image first: cheaper, not the paper's function)
    lean_context: bool = True  # context encoders keep only their input for backward and recompute (same function)
    extra: dict = field(default_factory=dict)  # free-form notes kept in checkpoints

    def validate(self) -> None:
        """Fail early with one clear message on a bad setting."""
        if self.cut_table not in TABLES:
            raise ContsupError(f"unknown cut table {self.cut_table!r}; choose from {', '.join(TABLES)}")
        LocalHead(8, self.head, 2)  # raises on an unknown head
        head_out_dim(self.loss, 2, self.width, self.widen)  # raises on an unknown loss
        parse_mode(self.context, self.modules)
        check_image_encoder(self.image_encoder)


class LocalNetwork(nn.Module):
    """K gradient-isolated modules; `forward` is the plain inference pass h -> h^c -> ... -> logits."""

    def __init__(self, backbone: Backbone, config: LocalConfig, sample: torch.Tensor) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.mode: ContextMode = parse_mode(config.context, config.modules)
        units = list(backbone.units)
        self.unit_shapes = probe_shapes(units, sample)
        self.cuts = resolve_cuts(
            backbone.name, backbone.unit_names, config.modules, config.cut_table, config.cuts,
            memory=lambda: memory_model(
                units, backbone.classifier, sample, self.unit_shapes, self.mode, config.head, config.loss,
                self._num_classes(backbone.classifier, self.unit_shapes), config.width, config.widen,
                config.recon is not None, config.image_encoder, config.lean_context,
            ),
        )
        x_shape = Shape(*sample.shape[-3:])
        bounds = [0, *(c + 1 for c in self.cuts), len(units)]
        self.blocks = nn.ModuleList(nn.Sequential(*units[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
        self.classifier = backbone.classifier
        self.backbone_name = backbone.name
        self.unit_names = backbone.unit_names
        # Shapes of the module inputs s_0 = x, s_j = h_j^c, and of each cut's output h_k.
        cut_shapes = [self.unit_shapes[c] for c in self.cuts]
        self.source_shapes = [x_shape, *cut_shapes]
        num_classes = self._num_classes(backbone.classifier, cut_shapes or self.unit_shapes[-1:])
        out_dim = head_out_dim(config.loss, num_classes, config.width, config.widen)
        self.heads = nn.ModuleList(
            LocalHead(s.channels, config.head, out_dim, config.width, config.widen) for s in cut_shapes
        )
        self.decoders = nn.ModuleList(
            Decoder(s.channels, x_shape.channels, (x_shape.height, x_shape.width)) for s in cut_shapes
        ) if config.recon is not None else nn.ModuleList()
        self.context = nn.ModuleList(
            CutContext(k + 1, self.mode, self.source_shapes, s, config.image_encoder, config.lean_context)
            for k, s in enumerate(cut_shapes)
        )
        # Last cut that reads each source s_j: after it, the step may drop s_j.
        self.last_use = {j: 0 for j in range(len(self.source_shapes))}
        for ctx in self.context:
            for j in ctx.source_ids + ([0] if ctx.image is not None else []):
                self.last_use[j] = max(self.last_use[j], ctx.cut)

    @staticmethod
    def _num_classes(classifier: nn.Module, shapes: Sequence[Shape]) -> int:
        """Number of classes the classifier predicts (its last Linear layer's out_features)."""
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ContsupError("the classifier needs a final nn.Linear layer to tell the number of classes")
        return linears[-1].out_features

    @property
    def num_modules(self) -> int:
        """K."""
        return len(self.blocks)

    def supply(self, k: int, h: torch.Tensor, sources: dict[int, torch.Tensor]) -> torch.Tensor:
        """Module k's (0-based) output, detached and supplied with context, ready for module k+1."""
        return self.context[k](h, sources)

    def module_input(self, k: int, h_prev: torch.Tensor, sources: dict[int, torch.Tensor]) -> torch.Tensor:
        """Module k's input: x for k = 0, else module k-1's output supplied with context.

        Records the input as source s_k and drops every source that no later cut reads.
        """
        if k == 0:
            return h_prev
        h_in = self.supply(k - 1, h_prev, sources)
        self.keep_source(k, h_in, sources)
        return h_in

    def keep_source(self, k: int, s: torch.Tensor, sources: dict[int, torch.Tensor]) -> None:
        """Record module k's input as source s_k (detached) and drop every source no later cut reads."""
        sources[k] = s.detach()
        for j in [j for j in sources if self.last_use[j] <= k]:
            del sources[j]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: every module in turn, context supplied at each cut, then the classifier."""
        sources = {0: x}
        h = x
        for k, block in enumerate(self.blocks):
            h = block(self.module_input(k, h, sources))
        return self.classifier(h)

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
            line = f"  module {k + 1:2d}: units {start}..{end} {names[start]}..{names[end]}  {n_params:,} params"
            if k < len(self.context):
                ctx = self.context[k]
                s = self.source_shapes[k + 1]
                feeds = [f"s{j}" for j in ctx.source_ids] + (["x:image"] if ctx.image is not None else [])
                line += f" | cut -> {s.channels}x{s.height}x{s.width}, context from {feeds or 'none'}"
            lines.append(line)
            start = end + 1
        return "\n".join(lines)
