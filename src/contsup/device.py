"""Devices in one place: a name to an indexed device, the backend flags, and the host syncs.

Every device the library hands on carries its index (`cuda` is the current CUDA device, `cuda:N`):
`torch.cuda.set_device` and the CUDA memory statistics refuse a bare `torch.device("cuda")`. The fast-kernel
flags (cuDNN autotuning, TF32) are set by `activate` alone, which every consumer of a device calls first:
training, evaluation, `contsup eval`, `analyze`, `profile` and each pipeline rank run with the same flags
(docs/method.md, "On a GPU"). The CUDA-only branches here and in `contsup.memory` / `contsup.train.peak` run in
the CPU test suite against recording fakes of `torch.cuda` (tests/gpu).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from contsup.errors import ContsupError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d{1,3})?")


def check_device_name(name: object) -> None:
    """auto, cpu, cuda or cuda:N (whether that device exists is checked by `resolve_device`)."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise ContsupError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def indexed(device: torch.device | str) -> torch.device:
    """`device` with its index: a bare `cuda` becomes the current CUDA device (`cuda:N`); others unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_device(name: str) -> torch.device:
    """The indexed device a setting names: `auto` is CUDA when available, else the CPU; a CUDA device this
    machine lacks is refused in one line."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ContsupError(f"device {name!r}: this PyTorch build or machine has no CUDA device; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ContsupError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return indexed(device)


def activate(device: torch.device | str, bf16: bool = False) -> torch.device:
    """Make an (indexed) `device` the process's current CUDA device with the fast kernels on; returns it.

    cuDNN picks the fastest convolution algorithm per shape (`cudnn.benchmark`: a run's shapes are fixed) and
    float32 matmuls and convolutions may use TF32 on Ampere and newer GPUs. Nothing happens off CUDA. With
    `bf16`, a GPU without bfloat16 (before Ampere) is refused in one line rather than by autocast's traceback.
    """
    device = indexed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if bf16 and not torch.cuda.is_bf16_supported():
            raise ContsupError(f"--bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                               "run without --bf16")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def synchronize(device: torch.device) -> None:
    """Wait on the host until `device` has run every queued kernel (a host sync on CUDA; nothing elsewhere).

    Timings call it before reading the clock, so that a measured time covers the work it names.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_host(t: torch.Tensor) -> torch.Tensor:
    """`t` on the CPU: the one way the training and evaluation loops read a device tensor (a host sync on CUDA)."""
    return t.cpu()


def to_host_tree(value: Any) -> Any:
    """`value` (a tensor, or dicts and lists of them) with every tensor on the CPU: what checkpoints hold, so
    that a file written on a GPU reads anywhere and a pipeline's ranks gather no GPU tensors."""
    if isinstance(value, torch.Tensor):
        return to_host(value)
    if isinstance(value, dict):
        return {k: to_host_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host_tree(v) for v in value)
    return value
