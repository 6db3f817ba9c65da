"""A cost model of parallel training over P stages, calibrated on this machine (docs/parallel.md, the model).

Calibration measures, at one batch size, each backbone unit's forward and backward seconds and the bytes
autograd saves for its backward, each local module's step (context, block, head, backward) seconds and saved
bytes, the bytes crossing each cut, each part's parameters, and the loopback bandwidth. Times and activation
bytes are taken to grow linearly with the batch. Stages are contiguous runs of units (end to end) or of modules
(local), balanced by time (`topology.partition`). For P stages, M micro-batches and a batch of B images:

- GPipe and 1F1B (end to end): one step takes sum_p (f_p + b_p) + (M - 1) max_p (f_p + b_p) + 2 (P - 1) c, with
  f_p, b_p stage p's forward and backward seconds on one micro-batch and c one micro-batch's crossing of a cut;
  balanced, the bubble is (P - 1) / (M + P - 1) of the step. GPipe keeps all M micro-batches' saved tensors,
  1F1B at most P - p on stage p (p from 0). Communication is taken to overlap computation except on the fill
  and drain path.
- the local pipeline: no backward crosses a rank, so once full a step takes the slowest stage's local steps on
  the whole batch, max_p max(L_p, c_p); the fill costs P - 1 steps once an epoch (left out of the rate). A rank
  holds one module's saved tensors at a time and at most `inflight` messages each way.
- DDP: every rank runs the whole network on B / P images, then all-reduces the gradients (a ring: 2 (P-1)/P of
  the parameter bytes through each rank's link); every rank holds all parameters.
Per-rank memory counts parameters, gradients and optimizer state (`STATE_BUFFERS`), saved tensors and messages.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from contsup.distributed.stage import boundary_sources
from contsup.distributed.topology import partition
from contsup.method.local_step import autocast, module_step
from contsup.method.network import LocalNetwork
from contsup.method.objective import Targets
from contsup.train.optim import STATE_BUFFERS


@dataclass
class Calibration:
    """What the model is calibrated from; seconds and bytes per image (at `batch`), bytes of parameters."""

    batch: int
    unit_fwd: list[float]  # seconds per image, each backbone unit (the classifier with the last)
    unit_bwd: list[float]
    unit_saved: list[float]  # bytes autograd saves per image for each unit's backward
    unit_out: list[float]  # bytes per image of each unit's output (what crosses a cut after it)
    unit_params: list[float]  # parameter bytes of each unit (the classifier with the last)
    module_step: list[float]  # seconds per image of each local module's step
    module_saved: list[float]  # bytes saved per image by each local module's step (head and context included)
    module_in: list[float]  # bytes per image crossing the cut in front of each module (0 for the first)
    module_params: list[float]  # parameter bytes of each module (head, decoder and incoming encoders included)
    bandwidth: float  # bytes per second between two ranks
    state_buffers: int = 1  # optimizer buffers per parameter (SGD momentum: 1; AdamW: 2)


@dataclass
class Prediction:
    """One schedule at P stages: images per second, each rank's idle share, the largest rank's memory."""

    schedule: str
    stages: int
    images_per_s: float
    idle: list[float]
    memory_bytes: float

    @property
    def bubble(self) -> float:
        """Mean idle share over the ranks."""
        return sum(self.idle) / len(self.idle)


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """GPipe's (and 1F1B's) idle share of a step with balanced stages: (P - 1) / (M + P - 1)."""
    return (stages - 1) / (micro_batches + stages - 1)


def stashed_micro_batches(schedule: str, stage: int, stages: int, micro_batches: int) -> int:
    """Micro-batches whose saved tensors stage `stage` (from 0) holds at its peak: all (GPipe), P - stage (1F1B)."""
    return micro_batches if schedule == "gpipe" else min(micro_batches, stages - stage)


def model_state(params: float, state_buffers: int) -> float:
    """Bytes of parameters, their gradients and the optimizer's buffers."""
    return params * (2 + state_buffers)


def pipeline(cal: Calibration, schedule: str, stages: int, batch: int, micro_batches: int) -> Prediction:
    """GPipe or 1F1B over `stages` contiguous runs of units (end to end)."""
    cost = [f + b for f, b in zip(cal.unit_fwd, cal.unit_bwd, strict=True)]
    ranges = partition(cost, stages)
    mb = batch / micro_batches
    work = [mb * sum(cost[i] for i in r) for r in ranges]  # one micro-batch's forward and backward, each stage
    crossing = max((cal.unit_out[r.stop - 1] * mb / cal.bandwidth for r in ranges[:-1]), default=0.0)
    step = sum(work) + (micro_batches - 1) * max(work) + 2 * (stages - 1) * crossing
    memory = []
    for p, r in enumerate(ranges):
        saved = stashed_micro_batches(schedule, p, stages, micro_batches) * mb * sum(cal.unit_saved[i] for i in r)
        messages = 2 * mb * (cal.unit_out[r.start - 1] if p > 0 else 0.0)  # an activation in, its gradient out
        memory.append(model_state(sum(cal.unit_params[i] for i in r), cal.state_buffers) + saved + messages)
    idle = [1 - micro_batches * w / step for w in work]
    return Prediction(schedule, stages, batch / step, idle, max(memory))


def local_pipeline(cal: Calibration, stages: int, batch: int, inflight: int = 2) -> Prediction:
    """contsup's pipeline of local modules over `stages` contiguous runs of modules, once full."""
    ranges = partition(cal.module_step, stages)
    work = [batch * sum(cal.module_step[k] for k in r) for r in ranges]
    crossing = [batch * cal.module_in[r.start] / cal.bandwidth for r in ranges]
    step = max(max(work), max(crossing))
    memory = []
    for r in ranges:
        saved = batch * max(cal.module_saved[k] for k in r)  # one module's step at a time
        out = cal.module_in[r.stop] if r.stop < len(cal.module_in) else 0.0
        messages = inflight * batch * (cal.module_in[r.start] + out)
        memory.append(model_state(sum(cal.module_params[k] for k in r), cal.state_buffers) + saved + messages)
    return Prediction("local", stages, batch / step, [1 - w / step for w in work], max(memory))


def data_parallel(cal: Calibration, ranks: int, batch: int) -> Prediction:
    """DDP over `ranks`: the whole network on batch / ranks images, then a ring all-reduce of the gradients."""
    share = batch / ranks
    compute = share * sum(f + b for f, b in zip(cal.unit_fwd, cal.unit_bwd, strict=True))
    params = sum(cal.unit_params)
    reduce = 2 * (ranks - 1) / ranks * params / cal.bandwidth
    step = compute + reduce
    memory = model_state(params, cal.state_buffers) + share * sum(cal.unit_saved)
    return Prediction("ddp", ranks, batch / step, [1 - compute / step] * ranks, memory)


def predict(cal: Calibration, stages: int, batch: int, micro_batches: int, inflight: int = 2) -> list[Prediction]:
    """Every schedule at `stages` ranks: GPipe, 1F1B, the local pipeline and DDP."""
    return [pipeline(cal, "gpipe", stages, batch, micro_batches), pipeline(cal, "1f1b", stages, batch, micro_batches),
            local_pipeline(cal, stages, batch, inflight), data_parallel(cal, stages, batch)]


# -- calibration ------------------------------------------------------------------------------------

def saved_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn(), bytes of the tensors autograd saved while it ran)."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def nbytes(module: nn.Module) -> int:
    """Parameter bytes of a module."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` timed calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        mark = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - mark)
    return best


def _unit_forward(unit: nn.Module, classifier: nn.Module | None, inp: torch.Tensor) -> torch.Tensor:
    """A unit's output (the logits for the last unit)."""
    out = unit(inp)
    return classifier(out) if classifier is not None else out


def _forward_backward(forward: Callable[[], torch.Tensor]) -> None:
    """A forward, then its backward from a gradient of ones."""
    out = forward()
    out.backward(torch.ones_like(out))


def _module_step(net: LocalNetwork, k: int, h: torch.Tensor, sources: dict[int, torch.Tensor], targets: Targets,
                 amp: AbstractContextManager) -> tuple[torch.Tensor, torch.Tensor]:
    """Module k's local step from module k-1's output: context supply, block, objective, backward."""
    return module_step(net, k, net.module_input(k, h, dict(sources)), targets, amp)


def calibrate_units(e2e: LocalNetwork, x: torch.Tensor, repeats: int = 3) -> dict[str, list[float]]:
    """Per unit of an end-to-end network (K = 1): forward and backward seconds, saved and output bytes, per image."""
    units, n = list(e2e.blocks[0]), x.shape[0]
    out: dict[str, list[float]] = {"unit_fwd": [], "unit_bwd": [], "unit_saved": [], "unit_out": [], "unit_params": []}
    h = x
    for i, unit in enumerate(units):
        forward = partial(_unit_forward, unit, e2e.classifier if i == len(units) - 1 else None,
                          h.detach().requires_grad_(i > 0))
        fwd = best_time(forward, repeats)
        y, saved = saved_bytes(forward)
        both = best_time(partial(_forward_backward, forward), repeats)
        out["unit_fwd"].append(fwd / n)
        out["unit_bwd"].append(max(both - fwd, 0.0) / n)
        out["unit_saved"].append(saved / n)
        out["unit_out"].append(y.numel() * y.element_size() / n)
        out["unit_params"].append(float(nbytes(unit) + (nbytes(e2e.classifier) if i == len(units) - 1 else 0)))
        with torch.no_grad():
            h = unit(h)
    return out


def calibrate_modules(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor,
                      repeats: int = 3) -> dict[str, list[float]]:
    """Per module of a local network: step seconds (context supply included) and saved bytes, bytes crossing the
    cut in front (`comm.Link`'s float tensors: h and the sources later cuts read), parameters; per image."""
    n, amp = x.shape[0], autocast(x.device, False)
    out: dict[str, list[float]] = {"module_step": [], "module_saved": [], "module_in": [], "module_params": []}
    targets = Targets(y, None)
    h, sources = x, {0: x}
    for k in range(net.num_modules):
        step = partial(_module_step, net, k, h, dict(sources), targets, amp)
        seconds = best_time(step, repeats)
        _, saved = saved_bytes(step)
        shapes = [net.source_shapes[j].dims for j in [k, *boundary_sources(net, k)]] if k > 0 else []
        out["module_step"].append(seconds / n)
        out["module_saved"].append(saved / n)
        out["module_in"].append(4.0 * sum(math.prod(d) for d in shapes))  # float32
        out["module_params"].append(float(sum(p.numel() * p.element_size() for p in net.module_parameters(k))))
        with torch.no_grad():
            s = net.module_input(k, h, sources)
            h = net.blocks[k](s)
    return out


def loopback_bandwidth(size: int = 32 * 2**20) -> float:
    """Bytes per second through a loopback TCP connection (what gloo uses between ranks on one machine)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    payload = bytes(size)

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(payload)

    sender = threading.Thread(target=send)
    mark = time.perf_counter()
    sender.start()
    conn, _ = server.accept()
    got = 0
    with conn:
        while got < size:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    sender.join()
    server.close()
    return got / (time.perf_counter() - mark)


def calibrate(net: LocalNetwork, e2e: LocalNetwork, batch: int, optimizer: str = "sgd",
              repeats: int = 3) -> Calibration:
    """Measure a local network and its end-to-end twin (same backbone) on one random batch, on the CPU."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *net.image_shape.dims, generator=gen)
    y = torch.randint(0, 2, (batch,), generator=gen)
    net.train()
    e2e.train()
    return Calibration(batch, **calibrate_units(e2e, x, repeats), **calibrate_modules(net, x, y, repeats),
                       bandwidth=loopback_bandwidth(), state_buffers=STATE_BUFFERS[optimizer])


def format_predictions(cal: Calibration, stages: list[int], batch: int, micro_batches: int,
                       inflight: int = 2) -> str:
    """The predictions as a markdown table: images/s, mean idle share and the largest rank's memory per schedule,
    and the local pipeline's rate over 1F1B's (M = `micro_batches`, or 4 per stage when 0)."""
    lines = ["| P | M | schedule | images/s | idle (mean over ranks) | memory of the largest rank (MiB) "
             "| local / 1F1B |", "|---|---|---|---|---|---|---|"]
    for p in stages:
        m = micro_batches or min(4 * p, batch)
        if p > min(len(cal.unit_fwd), len(cal.module_step)):
            lines.append(f"| {p} | {m} | — | more stages than units or modules | | | |")
            continue
        rows = predict(cal, p, batch, m, inflight)
        by = {r.schedule: r for r in rows}
        ratio = by["local"].images_per_s / by["1f1b"].images_per_s
        for r in rows:
            lines.append(f"| {p} | {m if r.schedule in ('gpipe', '1f1b') else '—'} | {r.schedule} | "
                         f"{r.images_per_s:.1f} | {r.bubble:.2f} | {r.memory_bytes / 2**20:.1f} | "
                         f"{f'{ratio:.2f}' if r.schedule == 'local' else ''} |")
    return "\n".join(lines)
