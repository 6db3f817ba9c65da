"""A backbone cut into K modules, each trained by its own objective, with Context Supply at each cut.

Indices are 0-based throughout the package:
- module k (0 <= k < K) is `blocks[k]`; it reads s_k (s_0 = x) and outputs h_k;
- `objectives[k]` trains module k: a local head (and decoder) on h_k for k < K-1, the classifier for the
  last module (contsup.method.objective);
- cut k (0 <= k < K-1) sits after module k (after unit `cuts[k]`); its encoders `context[k]` turn h_k
  into s_{k+1} = h_k^c. They run in front of module k+1, so module k+1's loss trains them;
- module k owns `blocks[k]`, `objectives[k]` and `context[k-1]` (`module_parts`): the step, clipping, the
  optimizer groups and the pipeline stages all take ownership from there;
- `last_use[j]` is the last cut that reads s_j (-1: none), so s_j can be dropped once module
  `last_use[j] + 1` has its input.

HPFF's cascade (`cascade` = wy > 0; docs/heads.md) is the one setting under which a gradient crosses a cut:
module k >= 1 also runs on `second_input`, module k-1 run again from its detached input, and that loss
(weighted wy, the own path's wx = 1 - wy) trains module k-1's units too; module 0 has no head of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.method.context import ContextMode, CutContext, init_local_modules, parse_mode
from contsup.method.cuts.balance import memory_model
from contsup.method.cuts.rules import parse_cut_list, resolve_cuts, validate_cuts
from contsup.method.heads import HeadSite, head_kinds, layout_kind
from contsup.method.losses import LOSSES
from contsup.method.objective import ClassifierObjective, Objective, TaskObjective, local_objective
from contsup.method.recon import Decoder, ReconWeights, parse_recon
from contsup.method.settings import check_local
from contsup.models.chain import Backbone, Shape, class_token_mixed, has_class_token, probe_shapes
from contsup.models.checkpointing import CheckpointedSequential
from contsup.models.norm import make_lean
from contsup.models.traced import TracedBackbone, trace_backbone

Sources = dict[int, torch.Tensor]  # module inputs s_j by j (s_0 = x) that later cuts still read


@dataclass(frozen=True)
class Plan:
    """What a network's settings resolve to and a checkpoint stores: the cut units and the reconstruction weights."""

    cuts: tuple[int, ...]
    recon: ReconWeights | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain data for a checkpoint."""
        return {"cuts": list(self.cuts), "recon": None if self.recon is None else self.recon.text()}


def num_classes(classifier: nn.Module) -> int:
    """Number of classes a classifier predicts (its last Linear layer's out_features)."""
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ContsupError("the classifier needs a final nn.Linear layer to tell the number of classes")
    return linears[-1].out_features


def explicit_cuts(backbone: Backbone, text: str | None) -> list[int] | list[tuple[int, int]] | None:
    """`cuts`: unit indices or stage.block pairs on a chain, module paths on a traced model."""
    if not text:
        return None
    if isinstance(backbone, TracedBackbone):
        return backbone.named_cuts(text.split(","))
    return parse_cut_list(text)


def objective_parts(objective: nn.Module) -> list[nn.Module]:
    """An objective's heads, decoders and losses (a cascade's two objectives taken apart; a task objective
    inside a reconstruction objective counts as a head, as it holds one)."""
    if isinstance(objective, Objective) and not isinstance(objective, TaskObjective):
        return [p for child in objective.children()
                for p in (objective_parts(child) if isinstance(child, Objective) else [child])]
    return [objective]


class LocalNetwork(nn.Module):
    """K gradient-isolated modules; `forward` is the plain inference pass h -> h^c -> ... -> logits.

    `backbone` is a chain (`Backbone`) or any model as written, traced and cut at its block boundaries
    (`trace_backbone`; there `config.cuts` names module paths). `plan` fixes the cuts and reconstruction
    weights (as stored in a checkpoint) instead of resolving them from the settings; `dataset` names the data
    for `recon = paper` when `recon_dataset` is not set. `cut_names` says where the cuts fell.
    """

    def __init__(self, backbone: Backbone | nn.Module, config: LocalConfig, sample: torch.Tensor,
                 plan: Plan | None = None, dataset: str | None = None) -> None:
        super().__init__()
        check_local(config)
        if not isinstance(backbone, Backbone):
            backbone = trace_backbone(backbone, sample)
        if isinstance(backbone, TracedBackbone):
            backbone.check_modules(config.modules)
        self.config = config
        # HPFF's cascade: (wx, wy), the weights of each module's own path and of its second path; None: off
        self.cascade = (1.0 - config.cascade, config.cascade) if config.cascade else None
        self.mode: ContextMode = parse_mode(config.context, config.modules)
        units = list(backbone.units)
        self._units = tuple(units)  # a tuple: not registered twice (the blocks own the units)
        self.unit_names = backbone.unit_names
        self.unit_shapes = probe_shapes(units, sample)
        self.image_shape = Shape.of(sample)
        # per unit: whether its output's class token carries the image (None: the backbone has no class token)
        marked = backbone.class_token if backbone.class_token is not None else any(
            not s.is_map and has_class_token(s.positions[0]) for s in self.unit_shapes)
        self.class_token = tuple(class_token_mixed(self.unit_shapes)) if marked else None
        self.loss = LOSSES[config.loss](num_classes(backbone.classifier), int(config.width * config.widen))
        self.head_kinds = head_kinds(config.head, config.modules - 1)
        if plan is None:
            recon = parse_recon(config.recon, backbone.name, config.recon_dataset or dataset, config.modules,
                                config.cut_table.startswith("balanced"))
            cuts = resolve_cuts(
                backbone.name, backbone.unit_names, config.modules, config.cut_table,
                explicit_cuts(backbone, config.cuts),
                memory=lambda: memory_model(
                    units, backbone.classifier, sample, self.unit_shapes, self.mode,
                    lambda j: self.new_objective(j, 0, recon), config.image_encoder, config.lean_context),
            )
            plan = Plan(tuple(cuts), recon)
        elif len(plan.cuts) != config.modules - 1:
            raise ContsupError(f"the stored plan has {len(plan.cuts)} cuts for K = {config.modules}")
        self.plan = Plan(tuple(validate_cuts(plan.cuts, len(units))), plan.recon)
        self.cuts = list(self.plan.cuts)
        self.unit_labels = list(backbone.unit_labels)  # each unit's name: the module path (traced) or stage.block
        self.cut_names = [self.unit_labels[c] for c in self.cuts]  # where the cuts fell, by the unit before each
        bounds = [0, *(c + 1 for c in self.cuts), len(units)]
        self.blocks = nn.ModuleList(
            CheckpointedSequential(*units[a:b], segments=config.checkpoint_segments) if config.checkpoint_segments
            else nn.Sequential(*units[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
        self.backbone_name = backbone.name
        # Shapes of the module inputs s_0 = x, s_{k+1} = h_k^c (h_k's shape).
        self.source_shapes = [self.image_shape, *(self.unit_shapes[c] for c in self.cuts)]
        local = [self.new_objective(c, k, self.plan.recon) for k, c in enumerate(self.cuts)]
        self.objectives = nn.ModuleList([*local, ClassifierObjective(backbone.classifier)])
        self.context = nn.ModuleList(
            CutContext(k, self.mode, self.source_shapes, s, config.image_encoder, config.lean_context,
                       patch=getattr(units[0], "patch", None))
            for k, s in enumerate(self.source_shapes[1:])
        )
        init_local_modules(self.group_modules("heads"), self.context, config.local_init, config.context_scale)
        if config.lean_norm and not make_lean(self):
            raise ContsupError("lean_norm makes nn.BatchNorm2d lean, and this network has none")
        self.last_use = {j: -1 for j in range(len(self.source_shapes))}
        for ctx in self.context:
            for j in ctx.source_ids + ([0] if ctx.image is not None else []):
                self.last_use[j] = max(self.last_use[j], ctx.cut)

    def new_objective(self, unit: int, k: int, recon: ReconWeights | None) -> Objective:
        """A new local objective of cut k placed after `unit` (the memory model tries cuts anywhere, K = 1 too)."""
        num_cuts = max(self.config.modules - 1, 1)  # at K = 1 the model still places one cut, anywhere
        names = self.unit_names[unit: unit + 2]  # (stage, block) on the ResNets, stage 0 the stem
        stage = None
        if all(isinstance(n, tuple) and isinstance(n[0], int) for n in names):
            stage = 0 if names[0][0] == 0 else names[1][0]  # MAN++'s code: fraction 0 at its cut after the stem
        site = HeadSite(k, num_cuts, unit, self.unit_shapes[unit], tuple(self.unit_shapes), self.image_shape,
                        self.loss.out_dim, self.config, self._units, self.class_token, stage)
        kind = self.head_kinds[k] if self.head_kinds else self.config.head.split(",")[0]
        return local_objective(site, kind, self.loss, recon)

    @property
    def num_modules(self) -> int:
        """K."""
        return len(self.blocks)

    @property
    def classifier(self) -> nn.Module:
        """The network's classifier (the last module's objective owns it)."""
        return self.objectives[-1].classifier

    @property
    def needs_pixels(self) -> bool:
        """Whether an objective reads the un-normalised image (the reconstruction term)."""
        return any(o.needs_pixels for o in self.objectives)

    def module_input(self, k: int, h: torch.Tensor, sources: Sources) -> torch.Tensor:
        """Module k's input from module k-1's raw output `h` (x itself for k = 0).

        Cut k-1 supplies context: s_k = h.detach() + encoded sources (`CutContext`); s_k is recorded in
        `sources` (detached), and every source no cut from k on reads is dropped.
        """
        if k == 0:
            return h
        s = self.context[k - 1](h, sources)
        self.keep_source(k, s, sources)
        return s

    def keep_source(self, k: int, s: torch.Tensor, sources: Sources) -> None:
        """Record module k's input as source s_k (detached) and drop every source no cut from k on reads."""
        sources[k] = s.detach()
        for j in [j for j in sources if self.last_use[j] < k]:
            del sources[j]

    def second_input(self, k: int, s_prev: torch.Tensor, sources: Sources) -> Callable[[], torch.Tensor]:
        """HPFF's cascade: a function giving module k's second input, module k-1 run again from its detached
        input `s_prev` and cut k-1's context added to its output without detaching it, so module k's second
        loss reaches module k-1's units. Call it before `module_input(k, ...)` drops the sources cut k-1 reads
        (it keeps them); the second path then runs after module k's own backward, one window at a time."""
        ctx, block = self.context[k - 1], self.blocks[k - 1]
        kept = {j: sources[j] for j in [*ctx.source_ids, *([0] if ctx.image is not None else [])]}
        return lambda: ctx(block(s_prev.detach()), kept, keep_graph=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: every module in turn, context supplied at each cut, then the classifier."""
        h, sources = x, {0: x}
        for k, block in enumerate(self.blocks):
            h = block(self.module_input(k, h, sources))
        return self.classifier(h)

    def module_parts(self, k: int) -> dict[str, nn.Module]:
        """What module k's loss trains, by state_dict prefix: its units, its objective and cut k-1's encoders."""
        parts: dict[str, nn.Module] = {f"blocks.{k}.": self.blocks[k], f"objectives.{k}.": self.objectives[k]}
        if k > 0:
            parts[f"context.{k - 1}."] = self.context[k - 1]
        return parts

    def module_parameters(self, k: int) -> list[nn.Parameter]:
        """Module k's parameters (`module_parts`)."""
        return [p for part in self.module_parts(k).values() for p in part.parameters()]

    def group_modules(self, group: str) -> list[nn.Module]:
        """The sub-modules of a parameter group: backbone (units + classifier), heads, decoders or context."""
        local = [part for o in self.objectives[:-1] for part in objective_parts(o)]
        return {
            "backbone": [*self.blocks, self.classifier],
            "heads": [m for m in local if not isinstance(m, Decoder)],
            "decoders": [m for m in local if isinstance(m, Decoder)],
            "context": list(self.context),
        }[group]

    def param_counts(self) -> dict[str, int]:
        """Number of trained parameters in each group, the frozen ones (MAN's EMA copies), and the total."""
        counts = {g: sum(p.numel() for m in self.group_modules(g) for p in m.parameters() if p.requires_grad)
                  for g in ("backbone", "heads", "decoders", "context")}
        counts["frozen"] = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        counts["total"] = sum(counts.values())
        return counts

    def describe(self) -> str:
        """A short human-readable summary: modules, cuts, heads and context per cut."""
        names = self.unit_labels
        c = self.config
        lines = [
            f"{self.backbone_name}: {len(names)} units, K={self.num_modules} modules, "
            f"context {self.mode.name}, head {c.head}, loss {c.loss}"
            + (f", reconstruction {self.plan.recon.text()}" if self.plan.recon is not None else "")
            + (f", HPFF's cascade (wy {c.cascade:g})" if c.cascade else ""),
        ]
        start = 0
        for k, block in enumerate(self.blocks):
            end = start + len(block) - 1
            n_params = sum(p.numel() for p in block.parameters())
            line = f"  module {k:2d}: units {start}..{end} {names[start]}..{names[end]}  {n_params:,} params"
            if k < len(self.context):
                ctx = self.context[k]
                feeds = [f"s{j}" for j in ctx.source_ids] + (["x:image"] if ctx.image is not None else [])
                kind = layout_kind(self.head_kinds[k], self.source_shapes[k + 1],
                                   self.class_token is not None and self.class_token[self.cuts[k]])
                line += (f" | cut after {self.cut_names[k]} -> {self.source_shapes[k + 1]}, head {kind}, "
                         f"context from {feeds or 'none'}")
            lines.append(line)
            start = end + 1
        return "\n".join(lines)
