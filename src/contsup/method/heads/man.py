"""MAN, the Momentum Auxiliary Network (Su et al., ECCV 2024; docs/heads.md; code JunhaoSu0/MAN), and MAN++'s
learnable scaling of its copies (TPAMI 2026; code JunhaoSu0/MAN_PlusPlus).

The head of cut k first applies two copies of the next module's first unit `nxt` to h_k:
a_k = LB(h_k) + EMA(h_k) (MAN++: s LB(h_k) + (2 - s) EMA(h_k), s learnable), then any head. LB is
trainable; EMA gets no gradient and follows nxt's parameters by momentum after every step of an optimizer
that holds nxt's parameters (a post-step hook on every optimizer, so a user's own loop moves it too).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from contsup.config import LocalConfig, choices
from contsup.errors import ContsupError, check_float
from contsup.method.heads.registry import HEAD_WRAPPERS, SETTING_CHECKS, HeadBuilder, HeadSite
from contsup.models.resnet import init_weights

EMA_STARTS = choices(LocalConfig, "man_ema_start")


def fresh_init(module: nn.Module) -> None:
    """Re-initialise in place: every layer's PyTorch default, then convolutions and BN as the backbone's init."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    init_weights(module)


class MomentumHead(nn.Module):
    """head(LB(h) + EMA(h)) over two copies of `nxt`, the next module's first unit (not owned, not saved here).

    LB starts freshly initialised (`fresh_init`), as in the official code, whose global init runs after
    the copy. EMA starts equal to nxt (`ema_start="paper"`, the paper's intent) or freshly initialised
    (`"random"`, the released code's behaviour). EMA follows the head's train/eval mode as the code's
    does: in training its BN layers normalise with batch statistics and update their own running
    statistics, which are never averaged from nxt's (only parameters are). With `scale` (MAN++), a
    learnable scalar s, starting at 1, weighs the copies: s LB(h) + (2 - s) EMA(h).
    """

    def __init__(self, head: nn.Module, nxt: nn.Module, ema_start: str = "paper", momentum: float = 0.995,
                 scale: bool = False) -> None:
        super().__init__()
        if ema_start not in EMA_STARTS:
            raise ContsupError(f"unknown MAN EMA start {ema_start!r}; choose from {', '.join(EMA_STARTS)}")
        self.head = head
        self.momentum = momentum  # of `ema_update` after each optimizer step
        self._nxt = (nxt,)  # a tuple: nn.Module does not register it, so nxt stays owned by its module
        self.lb = copy.deepcopy(nxt)
        fresh_init(self.lb)
        self.lb.requires_grad_(True)
        self.ema = copy.deepcopy(nxt)
        if ema_start == "random":
            fresh_init(self.ema)
        self.ema.requires_grad_(False)
        self.scale = nn.Parameter(torch.tensor(1.0)) if scale else None
        follow_optimizers(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy (copy.deepcopy, unpickling) follows the optimizers too."""
        super().__setstate__(state)
        follow_optimizers(self)

    @property
    def nxt(self) -> nn.Module:
        """The next module's first unit that the EMA copy follows."""
        return self._nxt[0]

    def copies(self, h: torch.Tensor) -> torch.Tensor:
        """a = LB(h) + EMA(h), or s LB(h) + (2 - s) EMA(h) with MAN++'s scale: what the head reads."""
        # a view of h for each copy, a node of its own: module tracking (FLOP counts) ends each one's backward there
        lb, ema = self.lb(h.view_as(h)), self.ema(h.view_as(h))
        return lb + ema if self.scale is None else self.scale * lb + (2 - self.scale) * ema

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Head output for the cut's output h."""
        return self.head(self.copies(h))

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """theta_ema <- m * theta_ema + (1 - m) * theta_nxt on parameters (not buffers), without a host sync."""
        if not 0.0 <= momentum <= 1.0:
            raise ContsupError(f"--man-momentum must lie in [0, 1], got {momentum}")
        ema = list(self.ema.parameters())
        src = [p.detach() for p in self.nxt.parameters()]
        torch._foreach_mul_(ema, momentum)
        torch._foreach_add_(ema, src, alpha=1.0 - momentum)


_followers: weakref.WeakSet[MomentumHead] = weakref.WeakSet()  # every live MomentumHead
_hook: list[Any] = []  # the global post-step hook's handle, once registered


def _after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """After any optimizer's step: each MomentumHead whose `nxt` that optimizer holds moves its EMA copy.

    Once per step of each such optimizer (one optimizer per network, as the Trainer and a plain loop have).
    MAN's code averages before the step, so its copy trails nxt by one step; here it follows the stepped weights.
    """
    if not _followers:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for head in list(_followers):
        first = next(head.nxt.parameters(), None)
        if first is not None and id(first) in held:
            head.ema_update(head.momentum)


def follow_optimizers(head: MomentumHead) -> None:
    """Make `head`'s EMA copy follow every optimizer step that moves its `nxt` (`_after_step`)."""
    _followers.add(head)
    if not _hook:
        _hook.append(register_optimizer_step_post_hook(_after_step))


@SETTING_CHECKS.append
def check_man(settings: LocalConfig) -> None:
    """man_momentum lies in [0, 1) (0: off)."""
    check_float("man_momentum", settings.man_momentum, 0.0, 1.0, high_open=True)


@HEAD_WRAPPERS.register("man")
def man(site: HeadSite, inner: HeadBuilder) -> nn.Module:
    """With `man_momentum` > 0: the inner head behind momentum copies of the unit after the cut."""
    s = site.settings
    if s.man_momentum <= 0:
        return inner(site)
    if site.next_unit is None:
        raise ContsupError("MAN needs the unit after each cut")
    after_next = replace(site, unit=site.unit + 1, shape=site.unit_shapes[site.unit + 1])  # what the head reads
    return MomentumHead(inner(after_next), site.next_unit, s.man_ema_start, s.man_momentum, s.man_scale)
