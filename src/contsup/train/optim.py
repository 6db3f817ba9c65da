"""The optimizer, and its state keyed by parameter name (so a checkpoint fits any split of the network).

`make_optimizer` builds SGD with Nesterov momentum over named parameter groups: `main`, and `context` (the
context encoders at `context_lr_scale` times the rate) when that scale is not 1. A checkpoint stores
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


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig,
                   context: Iterable[nn.Parameter] = ()) -> torch.optim.SGD:
    """SGD with Nesterov momentum and weight decay; the `context` parameters' rate scaled by `context_lr_scale`."""
    params = list(params)
    groups: list[dict[str, Any]] = [{"params": params, "name": "main"}]
    if cfg.context_lr_scale != 1.0:
        ctx = {id(p) for p in context}
        groups = [{"params": [p for p in params if id(p) not in ctx], "name": "main"},
                  {"params": [p for p in params if id(p) in ctx], "name": "context", "lr_scale": cfg.context_lr_scale}]
        groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def _order(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The optimizer's parameters in its state_dict's index order."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def settings_of(group: Mapping[str, Any]) -> dict[str, Any]:
    """A parameter group's settings: everything but its parameters and the rate the schedule sets each step."""
    return {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}


def named_state(optimizer: torch.optim.Optimizer, names: Names) -> dict[str, Any]:
    """The optimizer's state with parameter names in place of indices (tensors moved to the CPU)."""
    sd = optimizer.state_dict()
    order = [names[id(p)] for p in _order(optimizer)]
    return {
        "state": {order[i]: {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in s.items()}
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
