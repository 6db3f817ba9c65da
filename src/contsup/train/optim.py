"""The optimizer, and its state keyed by parameter name (so a checkpoint fits any split of the network).

`make_optimizer` builds the run's optimizer (`optimizer = sgd | adamw`) over named parameter groups: `main`,
and `context` (the context encoders, at `context_lr_scale` times the rate) when that scale is not 1. SGD
uses Nesterov momentum and weight decay on every parameter (the paper's recipe); AdamW (for transformers,
as timm and DeiT) keeps weight decay off norms, biases, position embeddings and class tokens, in a
`<group>-no-decay` group of their own. A checkpoint stores
`named_state`: per-parameter state by parameter name, and each group's settings with its parameters' names.
One process, a pipeline stage (which holds some of the parameters) and a merged pipeline checkpoint all
use this form; `load_named_state` maps it back onto any optimizer built by `make_optimizer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from contsup.config import TrainConfig
from contsup.errors import ContsupError

Names = Mapping[int, str]  # id(parameter) -> its name in the network


def param_names(net: nn.Module) -> dict[int, str]:
    """id(parameter) -> name, for every parameter of `net`."""
    return {id(p): name for name, p in net.named_parameters()}


NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token"})  # AdamW: no decay on these (by a name's last part)


def decays(name: str, param: nn.Parameter) -> bool:
    """AdamW's rule: weight decay on weight matrices and kernels, not on norms, biases (1-D) and embeddings."""
    return param.dim() > 1 and name.rsplit(".", 1)[-1] not in NO_DECAY_NAMES


def param_groups(named: Iterable[tuple[str, nn.Parameter]], cfg: TrainConfig) -> list[dict[str, Any]]:
    """The named parameter groups of `make_optimizer` (empty groups left out), parameters in the given order."""
    scaled = cfg.context_lr_scale != 1.0
    groups: dict[str, dict[str, Any]] = {}
    for name, p in named:
        group = "context" if scaled and name.startswith("context.") else "main"
        extra: dict[str, Any] = {"lr_scale": cfg.context_lr_scale} if group == "context" else {}
        if cfg.optimizer == "adamw" and not decays(name, p):
            group, extra = f"{group}-no-decay", {**extra, "weight_decay": 0.0}
        groups.setdefault(group, {"params": [], "name": group, **extra})["params"].append(p)
    order = ["main", "main-no-decay", "context", "context-no-decay"]
    return sorted(groups.values(), key=lambda g: order.index(g["name"]))


# State tensors `make_optimizer`'s optimizer holds per parameter (SGD: momentum; AdamW: two moments).
STATE_BUFFERS = {"sgd": 1, "adamw": 2}


def make_optimizer(named: Iterable[tuple[str, nn.Parameter]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The run's optimizer over named parameters (names as in the whole network: `context.*` are the encoders).

    sgd: Nesterov momentum `momentum`, L2 weight decay; adamw: betas (0.9, 0.999), decoupled weight decay.
    """
    groups = param_groups(named, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def _order(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The optimizer's parameters in its state_dict's index order."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def settings_of(group: Mapping[str, Any]) -> dict[str, Any]:
    """A parameter group's settings: everything but its parameters and the rate the schedule sets each step."""
    return {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}


def named_state(optimizer: torch.optim.Optimizer, names: Names) -> dict[str, Any]:
    """The optimizer's state with parameter names in place of indices (tensors detached, where they live)."""
    sd = optimizer.state_dict()
    order = [names[id(p)] for p in _order(optimizer)]
    return {
        "state": {order[i]: {k: v.detach() if torch.is_tensor(v) else v for k, v in s.items()}
                  for i, s in sd["state"].items()},
        "param_groups": [{**{k: v for k, v in g.items() if k != "params"}, "params": [order[i] for i in g["params"]]}
                         for g in sd["param_groups"]],
    }


def merge_named_states(parts: Iterable[Mapping[str, Any]], order: Iterable[str]) -> dict[str, Any]:
    """One named state from the states of optimizers over disjoint parameter sets, groups merged by name.

    Each merged group lists its parameters in `order` (the network's), as one process's optimizer would.
    """
    rank = {name: i for i, name in enumerate(order)}
    state: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for part in parts:
        state.update(part["state"])
        for g in part["param_groups"]:
            merged = groups.setdefault(g["name"], {**g, "params": []})
            merged["params"] = sorted([*merged["params"], *g["params"]], key=rank.__getitem__)
    return {"state": state, "param_groups": list(groups.values())}


def load_named_state(optimizer: torch.optim.Optimizer, stored: Mapping[str, Any], names: Names) -> None:
    """Load a named state (of this optimizer's parameters or of more) into an optimizer over named parameters."""
    by_name = {g["name"]: g for g in stored["param_groups"]}
    order = [names[id(p)] for p in _order(optimizer)]
    index = {name: i for i, name in enumerate(order)}
    groups = []
    for own in optimizer.param_groups:
        g = by_name.get(own["name"])
        if g is None or not {names[id(p)] for p in own["params"]} <= set(g["params"]):
            raise ContsupError(f"the stored optimizer state has no group {own['name']!r} holding these parameters")
        groups.append({**{k: v for k, v in g.items() if k != "params"},
                       "params": [index[names[id(p)]] for p in own["params"]]})
    state = {index[name]: s for name, s in stored["state"].items() if name in index}
    optimizer.load_state_dict({"state": state, "param_groups": groups})
