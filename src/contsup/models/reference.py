"""A user's own model on the command line: `--arch package.module:function` (docs/models.md).

Like `torchrun script.py`, this runs the user's code: `package.module` is imported (from the current folder
first, as `python -m` does, then the installed packages) and `function` is called to make the model, with
`num_classes=`, `in_channels=` and `image_size=` where it takes them. It may return any nn.Module (traced and
cut by `contsup.models.traced.trace_backbone`) or a `Backbone`. The reference must be dotted Python identifiers, checked
before anything is imported.

A checkpoint records the reference as its `arch`. contsup imports a reference read from a file only when the
user names it again on this run (`contsup eval --arch package.module:function`, `allow`): a checkpoint
alone never makes contsup import code.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys

import torch
from torch import nn

from contsup.errors import ContsupError
from contsup.models.chain import Backbone
from contsup.models.traced import trace_backbone

REFERENCE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", re.ASCII)
_allowed: set[str] = set()  # references the user named in this process (`allow`)


def is_reference(arch: str) -> bool:
    """Whether an `arch` names the user's code (package.module:function) rather than a registered backbone."""
    return ":" in arch


def check_reference(ref: str) -> None:
    """A reference is `package.module:function`, dotted Python identifiers; anything else is refused unimported."""
    if not REFERENCE.fullmatch(ref) or len(ref) > 200:
        raise ContsupError(f"--arch {ref!r}: name your model as package.module:function (Python identifiers, "
                           "e.g. mymodels.nets:small_cnn)")


def allow(ref: str) -> None:
    """Let a reference read from a checkpoint be imported in this process (the user named it)."""
    check_reference(ref)
    _allowed.add(ref)


def check_allowed(ref: str, where: str) -> None:
    """Refuse to import a reference that a file (`where`) names and the user did not name again."""
    if ref not in _allowed:
        raise ContsupError(f"{where} was trained on {ref}, your own code; contsup imports code only when you name "
                           f"it: add --arch {ref}")


def build_reference(ref: str, in_channels: int, num_classes: int, image_size: int) -> Backbone:
    """Import `package.module`, call `function` and make its model a Backbone for these inputs and classes."""
    check_reference(ref)
    module_name, fn_name = ref.split(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the user's folder, as `python -m` and torchrun's script folder
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ContsupError(f"--arch {ref}: cannot import {module_name} ({err}); run contsup from the folder that "
                           "holds it, or install it") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ContsupError(f"--arch {ref}: {module_name} has no function {fn_name}")
    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    params = inspect.signature(fn).parameters
    model = fn(**{k: v for k, v in offered.items() if k in params})
    if not isinstance(model, nn.Module):
        raise ContsupError(f"--arch {ref}: {fn_name}() returned {type(model).__name__}, not an nn.Module")
    backbone = model if isinstance(model, Backbone) else trace_backbone(
        model, torch.zeros(1, in_channels, image_size, image_size))
    linears = [m for m in backbone.classifier.modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1].out_features != num_classes:
        raise ContsupError(f"--arch {ref}: the model predicts {linears[-1].out_features} classes, the data has "
                           f"{num_classes}: give {fn_name} a num_classes argument")
    backbone.name = ref
    return backbone
