"""Measured memory of a piece of work: tensor allocations (CPU or CUDA) and tensors saved for backward.

Two independent measurements:

- `measure_peak`: the peak of tensor memory allocated while a function runs, above what was allocated
  when it started. On CUDA this is the caching allocator's `max_memory_allocated` after a reset. On the
  CPU it replays the PyTorch profiler's memory events (every allocation and free of the CPU allocator,
  from every thread, with a time stamp) and takes the peak of their running sum.
- `SavedTensorCounter`: the bytes of tensors that autograd saves for backward, counted through the
  saved-tensor hooks. A storage is counted once however many graph nodes save it, from the moment it is
  first saved until the last graph node holding it is freed; parameters are left out (they live anyway).
  Its peak is the activation memory a step holds at once, the cross-check for `measure_peak`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

MEMORY_EVENT = "[memory]"


@dataclass
class PeakMemory:
    """Peak bytes allocated while a function ran, above the bytes allocated when it started."""

    peak_bytes: int
    method: str


def cpu_peak_from_events(events: list[tuple[int, int]]) -> int:
    """Peak of the running sum of (time, signed bytes) allocation events, taken in time order (>= 0)."""
    peak = current = 0
    for _, nbytes in sorted(events):
        current += nbytes
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def quiet_fd2() -> Iterator[None]:
    """Send the process's C-level stderr (file descriptor 2) to the null device inside this context."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, PeakMemory]:
    """Run `fn` once and measure the peak tensor memory it allocated on `device` (see module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
        return out, PeakMemory(int(peak), "cuda max_memory_allocated")
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with quiet_fd2():  # the profiler's C++ start and stop lines (USDT:... profiler_start), nothing else
            prof.start()
        try:
            out = fn()
        finally:
            with quiet_fd2():
                prof.stop()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == MEMORY_EVENT and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    return out, PeakMemory(cpu_peak_from_events(events), "cpu allocator events (torch.profiler)")


class _Saved:
    """What the pack hook stores: the tensor, and a release of its count when the graph frees it."""

    __slots__ = ("tensor", "key", "counter")

    def __init__(self, tensor: torch.Tensor, key: int | None, counter: SavedTensorCounter) -> None:
        self.tensor, self.key, self.counter = tensor, key, counter

    def __del__(self) -> None:
        if self.key is not None:
            self.counter._release(self.key)


class SavedTensorCounter:
    """Counts bytes of tensors saved for backward: the running total, its peak, and everything ever saved."""

    def __init__(self, exclude: nn.Module | None = None) -> None:
        self._skip = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude is not None else set()
        self._live: dict[int, list[int]] = {}  # storage pointer -> [references, bytes]
        self.current = 0
        self.peak = 0
        self.total = 0  # every distinct storage saved, summed over the whole run

    def ignore(self, *tensors: torch.Tensor) -> None:
        """Leave these tensors' storages out of the count (inputs held elsewhere anyway)."""
        self._skip.update(t.untyped_storage().data_ptr() for t in tensors)

    def _pack(self, t: torch.Tensor) -> _Saved:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if isinstance(t, nn.Parameter) or key in self._skip or key == 0:
            return _Saved(t, None, self)
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [0, storage.nbytes()]
            self.current += entry[1]
            self.total += entry[1]
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        return _Saved(t, key, self)

    @staticmethod
    def _unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self._live[key]

    @contextlib.contextmanager
    def __call__(self) -> Iterator[SavedTensorCounter]:
        """Count inside this context (hooks are active only here)."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield self


def saved_bytes(fn: Callable[[], Any], exclude: nn.Module | None = None) -> tuple[Any, SavedTensorCounter]:
    """Run `fn` with saved-tensor counting; returns its result and the counter (peak, total)."""
    counter = SavedTensorCounter(exclude)
    with counter():
        out = fn()
    return out, counter
