"""The per-cut objective: what trains module k (docs/method.md, the engine).

An objective reads module k's output h_k (and what it declares: the image's pixels for a decoder), returns
the module's loss with its prediction, and owns its parameters. Cut k's objective is a local head with a
local loss (`HEADS`, `LOSSES`), with InfoPro's reconstruction term added when it is on; the last module's
objective is the network's classifier with cross entropy. Module k owns its units, its objective and the
encoders of the cut in front of it (`LocalNetwork.module_parts`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.method.heads import HEADS
from contsup.method.losses import LocalLoss, float32_loss
from contsup.method.man import MomentumHead
from contsup.method.patches import PatchAveraged
from contsup.method.recon import Decoder, ReconWeights
from contsup.method.tokens import layout_kind
from contsup.models.chain import Shape


@dataclass(frozen=True)
class Targets:
    """What a batch offers the objectives besides h_k: the labels, and the un-normalised image when asked for."""

    y: torch.Tensor
    pixels: torch.Tensor | None = None


@dataclass(frozen=True)
class Cut:
    """What a head builder may read about its cut."""

    index: int  # cut k (after module k), 0-based
    num_cuts: int  # K - 1
    unit: int  # the unit the cut follows
    shape: Shape  # the head's input shape (h_k's; with MAN, the next unit's output shape)
    unit_shapes: tuple[Shape, ...]  # every unit's output shape (for heads modelled on later units)
    image: Shape  # the network input's shape
    out_dim: int  # the local loss's input size
    settings: LocalConfig  # the run's local-learning settings (head widths, AugLocal depth, ...)
    next_unit: nn.Module | None = None  # the unit after the cut (MAN's copies follow it), not owned

    @property
    def width(self) -> int:
        """Hidden width of the heads (W x widen)."""
        return int(self.settings.width * self.settings.widen)


class Objective(nn.Module):
    """What trains one module: `forward(h, targets)` -> (loss, prediction)."""

    needs_pixels = False  # whether `targets.pixels` must be given

    def after_step(self) -> None:
        """Follow the optimizer step (MAN's momentum copies move towards the next unit)."""
        for m in self.modules():
            if isinstance(m, MomentumHead):
                m.ema_update(m.momentum)


class TaskObjective(Objective):
    """A local head and a local loss on its output."""

    def __init__(self, head: nn.Module, loss: LocalLoss) -> None:
        super().__init__()
        self.head = head
        self.loss = loss

    def forward(self, h: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        """(local loss in float32, head output)."""
        out = self.head(h)
        return float32_loss(self.loss.fn, out, targets.y), out


class ClassifierObjective(Objective):
    """The last module's objective: the network's classifier, cross entropy on its logits."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, h: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross entropy in float32, logits)."""
        logits = self.classifier(h)
        return float32_loss(F.cross_entropy, logits, targets.y), logits


class ReconObjective(Objective):
    """InfoPro's local loss: lambda_x * reconstruction BCE + lambda_y * the task objective's loss."""

    needs_pixels = True

    def __init__(self, task: Objective, decoder: Decoder, lambda_x: float, lambda_y: float) -> None:
        super().__init__()
        self.task = task
        self.decoder = decoder
        self.lambda_x, self.lambda_y = lambda_x, lambda_y

    def forward(self, h: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted sum of both terms, the task's prediction)."""
        if targets.pixels is None:
            raise ContsupError("the reconstruction term needs the un-normalised image (pixels in [0, 1]); "
                               "give the Trainer `pixels=` or a loader with a `denormalize` method")
        task, out = self.task(h, targets)
        return self.lambda_x * self.decoder.loss(h, targets.pixels) + self.lambda_y * task, out


def head_kinds(text: str, num_cuts: int) -> list[str]:
    """The head kind of each cut: one kind for all, or a comma-separated kind per cut."""
    kinds = [t.strip() for t in text.split(",")]
    if len(kinds) == 1:
        return kinds * num_cuts
    if len(kinds) != num_cuts:
        raise ContsupError(f"head {text!r} lists {len(kinds)} kinds for {num_cuts} cuts: give one, or one per cut")
    return kinds


def local_head(cut: Cut, kind: str) -> nn.Module:
    """Cut k's head: the registered `kind`, behind MAN's momentum copies of the next unit when `man_momentum` > 0,
    on n x n patches with their outputs averaged when `head_patches` = n > 1."""
    s = cut.settings
    if s.man_momentum > 0:
        if cut.next_unit is None:
            raise ContsupError("MAN needs the unit after each cut")
        after_next = replace(cut, unit=cut.unit + 1, shape=cut.unit_shapes[cut.unit + 1])  # what the head reads
        head: nn.Module = MomentumHead(HEADS[layout_kind(kind, after_next.shape)](after_next), cut.next_unit,
                                       s.man_ema_start, s.man_momentum)
    else:
        head = HEADS[layout_kind(kind, cut.shape)](cut)
    if s.head_patches > 1:
        if not cut.shape.is_map:
            raise ContsupError("head_patches cuts feature maps into patches; this cut outputs tokens")
        head = PatchAveraged(head, s.head_patches)
    return head


def local_objective(cut: Cut, kind: str, loss: LocalLoss, recon: ReconWeights | None) -> Objective:
    """Cut k's objective: its head (`local_head`) with the local loss, plus the reconstruction term with `recon`."""
    task = TaskObjective(local_head(cut, kind), loss)
    if recon is None:
        return task
    if not (cut.shape.is_map and cut.image.is_map):
        raise ContsupError("the reconstruction term decodes feature maps back to the image; this cut outputs tokens")
    lambda_x, lambda_y = recon.at(cut.index, cut.num_cuts)
    decoder = Decoder(cut.shape.channels, cut.image.channels, (cut.image.height, cut.image.width))
    return ReconObjective(task, decoder, lambda_x, lambda_y)
