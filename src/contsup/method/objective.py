"""The per-cut objective: what trains module k (docs/method.md, the engine).

An objective reads module k's output h_k (and what it declares: the image's pixels for a decoder), returns
the module's loss with its prediction, and owns its parameters. Cut k's objective is a local head with a
local loss (`heads/`, `LOSSES`), with InfoPro's reconstruction term added when it is on; the last module's
objective is the network's classifier with cross entropy. Module k owns its units, its objective and the
encoders of the cut in front of it (`LocalNetwork.module_parts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from contsup.errors import ContsupError
from contsup.method.heads import HeadSite, local_head
from contsup.method.heads.man import MomentumHead
from contsup.method.losses import LocalLoss, float32_loss
from contsup.method.recon import Decoder, ReconWeights, cut_weights


@dataclass(frozen=True)
class Targets:
    """What a batch offers the objectives besides h_k: the labels, and the un-normalised image when asked for."""

    y: torch.Tensor
    pixels: torch.Tensor | None = None


class Objective(nn.Module):
    """What trains one module: `forward(h, targets)` -> (loss, prediction)."""

    needs_pixels = False  # whether `targets.pixels` must be given
    trains = True  # whether its loss trains anything (the step runs the module without a graph otherwise)

    def second_path(self, z: torch.Tensor, targets: Targets) -> torch.Tensor:
        """HPFF's cascade: the loss of the module's second path, which also ran the module before (the last
        module's classifier: its own loss again; docs/heads.md)."""
        return self(z, targets)[0]


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
    """InfoPro's local loss: lambda_x * reconstruction BCE + lambda_y * the task objective's loss.

    Behind MAN's copies the decoder reads their output a = LB(h) + EMA(h), what the head reads, as MAN's code
    does; otherwise it reads h.
    """

    needs_pixels = True

    def __init__(self, task: TaskObjective, decoder: Decoder, lambda_x: float, lambda_y: float) -> None:
        super().__init__()
        self.task = task
        self.decoder = decoder
        self.lambda_x, self.lambda_y = lambda_x, lambda_y

    def forward(self, h: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted sum of both terms, the task's prediction)."""
        if targets.pixels is None:
            raise ContsupError("the reconstruction term needs the un-normalised image (pixels in [0, 1]); "
                               "give the Trainer `pixels=` or a loader with a `denormalize` method")
        man = self.task.head
        h = man.copies(h) if isinstance(man, MomentumHead) else h
        # Each reader gets a view of h, a node of its own: module tracking (the FLOP counts) then ends each one's
        # backward at its own input, not once both are done, which counted ops of one under the other too.
        if isinstance(man, MomentumHead):
            out = man.head(h.view_as(h))
            task = float32_loss(self.task.loss.fn, out, targets.y)
        else:
            task, out = self.task(h.view_as(h), targets)
        return self.lambda_x * self.decoder.loss(h.view_as(h), targets.pixels) + self.lambda_y * task, out


class NoObjective(Objective):
    """Module 0 under HPFF's cascade: no head of its own; module 1's second path trains it."""

    trains = False

    def forward(self, h: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        """(a zero loss that trains nothing, h)."""
        return h.new_zeros((), dtype=torch.float32), h


class CascadeObjective(Objective):
    """HPFF's cascade at cut k (docs/heads.md): `own` reads module k's output from its detached input (HPFF's
    `net_classifier`), `second` reads it from module k-1's detached input (`aux_classifier`, `aux_decoder`)."""

    def __init__(self, own: TaskObjective, second: Objective) -> None:
        super().__init__()
        self.own = own
        self.second = second
        self.needs_pixels = second.needs_pixels

    def forward(self, h: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        """(the own head's loss, its output)."""
        return self.own(h, targets)

    def second_path(self, z: torch.Tensor, targets: Targets) -> torch.Tensor:
        """The second path's loss: the task head (and the reconstruction term) on z."""
        return self.second(z, targets)[0]


def local_objective(site: HeadSite, kind: str, loss: LocalLoss, recon: ReconWeights | None) -> Objective:
    """Cut k's objective: its head (`local_head`) with the local loss, plus the reconstruction term with `recon`
    (weighted by `recon_schedule`; decoding MAN's copies' output when the head is behind them). Under HPFF's
    cascade: none at cut 0, and at the other cuts a second head for the own path beside that objective."""
    if site.settings.cascade:
        if site.index == 0:
            return NoObjective()
        own = TaskObjective(local_head(site, kind), loss)
        return CascadeObjective(own, isolated_objective(site, kind, loss, recon))
    return isolated_objective(site, kind, loss, recon)


def isolated_objective(site: HeadSite, kind: str, loss: LocalLoss, recon: ReconWeights | None) -> Objective:
    """Cut k's head with the local loss, and the reconstruction term with `recon` (`local_objective`)."""
    task = TaskObjective(local_head(site, kind), loss)
    if recon is None:
        return task
    if not (site.shape.is_map and site.image.is_map):
        raise ContsupError("the reconstruction term decodes feature maps back to the image; this cut outputs tokens")
    lambda_x, lambda_y = cut_weights(recon, site.settings.recon_schedule, site.index, site.num_cuts, site.next_stage)
    decoded = site.unit_shapes[site.unit + 1] if isinstance(task.head, MomentumHead) else site.shape
    decoder = Decoder(decoded.channels, site.image.channels, (site.image.height, site.image.width),
                      site.settings.recon_patches)
    return ReconObjective(task, decoder, lambda_x, lambda_y)
