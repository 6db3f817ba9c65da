"""Memory of a run: its process peak (allocator peak on CUDA, peak resident set size on CPU), and the
measured peak of one training step of its network (`step_peak`, the step `contsup profile` measures)."""

from __future__ import annotations

import copy
import resource
import sys

import torch

from contsup.memory import PeakMemory, measure_peak
from contsup.method.local_step import autocast, local_step
from contsup.method.network import LocalNetwork, num_classes
from contsup.models.chain import to_format


def reset_peak(device: torch.device) -> None:
    """Start a new peak window (CUDA only; the CPU RSS peak is process-wide)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(bytes, what was measured): CUDA max allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss if sys.platform == "darwin" else rss * 1024), "process peak RSS"


def step_peak(net: LocalNetwork, batch_size: int, device: torch.device, bf16: bool = False,
              fmt: torch.memory_format = torch.contiguous_format, seed: int = 0) -> PeakMemory:
    """Measured peak memory of one local step (forward and backward of every module) of a copy of `net`.

    The batch is random, of `batch_size` images of the network's input shape, in the run's memory format
    `fmt`. The optimizer step is left out: it runs after the last backward, when the activations are gone,
    so the peak is the same. The network passed in, its BatchNorm statistics and the global random
    generators are left untouched.
    """
    twin = copy.deepcopy(net).to(device).train()
    g = torch.Generator().manual_seed(seed)
    shape = twin.source_shapes[0]
    x = to_format(torch.randn(shape.batch(batch_size), generator=g).to(device), fmt)
    y = torch.randint(0, num_classes(twin.classifier), (batch_size,), generator=g).to(device)
    pixels = to_format(torch.rand(x.shape, generator=g).to(device), fmt) if twin.needs_pixels else None
    return measure_peak(lambda: local_step(twin, x, y, pixels, autocast(device, bf16)), device)[1]

