"""Recording fakes of `torch.cuda` and `torch.backends`, so that every CUDA-only branch runs on this CPU machine.

`fake_cuda` makes the process look like it has two GPUs, the current one `cuda:1`. Each fake records its
call in `FakeCuda.calls` and checks its arguments as the real function does where a wrong argument would
fail on a GPU (`set_device` refuses a device without an index, as torch raises). Tensors cannot be put on
the fake GPU: tests of the code paths around tensors run on the CPU or on the `meta` device
(test_device_leak.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist


class FakeStream:
    """A CUDA stream whose `synchronize` is recorded."""

    def __init__(self, fake: FakeCuda, device: Any) -> None:
        self.fake, self.device = fake, device

    def synchronize(self) -> None:
        self.fake.record("stream.synchronize", self.device)


class FakeCuda:
    """Two fake GPUs; `calls` lists (function, argument) in call order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.allocated, self.max_allocated = 100, 350

    def record(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))

    def names(self) -> list[str]:
        """The recorded functions' names, in call order."""
        return [name for name, _ in self.calls]

    def set_device(self, device: Any) -> None:
        if isinstance(device, torch.device) and device.index is None:  # what torch.cuda.set_device raises
            raise ValueError("Expected a torch.device with a specified index or an integer, but got:cuda")
        self.record("set_device", device)

    def synchronize(self, device: Any = None) -> None:
        self.record("synchronize", device)

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.record("reset_peak_memory_stats", device)

    def memory_allocated(self, device: Any = None) -> int:
        self.record("memory_allocated", device)
        return self.allocated

    def max_memory_allocated(self, device: Any = None) -> int:
        self.record("max_memory_allocated", device)
        return self.max_allocated

    def current_stream(self, device: Any = None) -> FakeStream:
        self.record("current_stream", device)
        return FakeStream(self, device)

    def get_device_properties(self, device: Any = None) -> SimpleNamespace:
        self.record("get_device_properties", device)
        return SimpleNamespace(total_memory=80 * 2**30)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCuda]:
    """This process sees two GPUs (`cuda:1` current) through recording fakes; backend flags start off."""
    fake = FakeCuda()
    for name in ("set_device", "synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated",
                 "current_stream", "get_device_properties"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.benchmark = torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield fake
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def no_cuda_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Module.to(<a CUDA device>)` leaves the module where it is (the fake GPUs hold no tensors)."""
    real_to = torch.nn.Module.to

    def to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        device = kwargs.get("device", args[0] if args else None)
        if isinstance(device, (torch.device, str)) and torch.device(device).type == "cuda":
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
