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
- Interleaved 1F1B and ZB-V (two stages a rank, looped or V-shaped; end to end): torch's own order of each
  rank's actions (forward F, backward B, or ZB-V's input-gradient I and weight-gradient W) replayed with
  the calibrated times: an action starts when its rank is free and its inputs are there (the previous
  stage's F, the next stage's B or I, plus a crossing c between ranks). Balanced, Interleaved 1F1B's bubble
  is (P - 1) / (2M + P - 1) (Narayanan et al. 2021); ZB-V fills it with W. The peak saved tensors of a rank
  are counted along its order: a stage's F saves them, its B (or W) frees them.
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
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from contsup.distributed.stage import boundary_sources
from contsup.distributed.topology import partition, stage_owners
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
    unit_bwd_input: list[float] | None = None  # seconds per image of each unit's input gradient (None: half)


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


Action = tuple[str, int, int]  # (F, B, I or W; stage; micro-batch)


def rank_order(schedule: str, rank: int, ranks: int, micro_batches: int) -> list[Action]:
    """A rank's actions in the order torch's schedule runs them: GPipe all forwards then all backwards; 1F1B
    P - 1 - rank forwards, then one forward one backward; Interleaved 1F1B and ZB-V as torch orders them."""
    m = micro_batches
    if schedule == "gpipe":
        return [("F", rank, i) for i in range(m)] + [("B", rank, i) for i in range(m)]
    if schedule == "1f1b":
        warm = min(m, ranks - 1 - rank)
        steady = [a for i in range(m - warm) for a in (("F", rank, warm + i), ("B", rank, i))]
        return [("F", rank, i) for i in range(warm)] + steady + [("B", rank, i) for i in range(m - warm, m)]
    from torch.distributed.pipelining import schedules  # torch's own orders (private, pinned by the tests)

    rounds = max(1, m // ranks)
    state = SimpleNamespace(pp_group_size=ranks, n_local_stages=2, num_stages=2 * ranks, _n_microbatches=m,
                            number_of_rounds=rounds, microbatches_per_round=m // rounds)
    cls = schedules.ScheduleZBVZeroBubble if schedule == "zbv" else schedules.ScheduleInterleaved1F1B
    ops = cls._calculate_single_rank_operations(state, rank)  # type: ignore[arg-type]
    return [(op.computation_type.value, op.stage_index, op.microbatch_index) for op in ops if op is not None]


def _inputs(action: Action, last: int) -> list[tuple[str, int, int]]:
    """What an action waits for: the previous stage's forward; its own forward and the next stage's input
    gradient ("G": a B or an I); its own I."""
    kind, s, m = action
    if kind == "F":
        return [("F", s - 1, m)] if s > 0 else []
    if kind == "W":
        return [("I", s, m)]
    return [("F", s, m)] + ([("G", s + 1, m)] if s < last else [])


def replay(orders: list[list[Action]], seconds: Callable[[str, int], float], owners: list[int],
           crossing: float) -> tuple[float, list[float]]:
    """(the step's seconds, each rank's busy seconds): every rank runs its actions in order, each starting when
    the rank is free and its inputs are done (plus `crossing` when they come from another rank)."""
    done: dict[tuple[str, int, int], float] = {}
    clock, busy, pos = [0.0] * len(orders), [0.0] * len(orders), [0] * len(orders)
    last, moved = len(owners) - 1, True
    while moved:
        moved = False
        for r, order in enumerate(orders):
            while pos[r] < len(order):
                needs = _inputs(order[pos[r]], last)
                if any(n not in done for n in needs):
                    break
                kind, s, m = order[pos[r]]
                start = max([clock[r]] + [done[n] + (crossing if owners[n[1]] != r else 0.0) for n in needs])
                t = seconds(kind, s)
                clock[r], busy[r], pos[r], moved = start + t, busy[r] + t, pos[r] + 1, True
                done[(kind, s, m)] = clock[r]
                if kind in ("B", "I"):
                    done[("G", s, m)] = clock[r]
    if any(p < len(o) for p, o in zip(pos, orders, strict=True)):
        raise RuntimeError("the schedule's actions wait on each other")  # a wrong order, not a user error
    return max(clock), busy


def peak_stash(order: list[Action], saved: Callable[[int], float]) -> float:
    """Most saved-tensor bytes a rank holds at once along its order: F saves its stage's, B or W frees them."""
    live = peak = 0.0
    for kind, s, _ in order:
        live += saved(s) if kind == "F" else -saved(s) if kind in ("B", "W") else 0.0
        peak = max(peak, live)
    return peak


def looped_pipeline(cal: Calibration, schedule: str, ranks: int, batch: int, micro_batches: int) -> Prediction:
    """Interleaved 1F1B or ZB-V over `ranks` ranks of two stages each (contiguous runs of units), replayed."""
    cost = [f + b for f, b in zip(cal.unit_fwd, cal.unit_bwd, strict=True)]
    ranges = partition(cost, 2 * ranks)
    owners = stage_owners(schedule, ranks)
    mb = batch / micro_batches
    bwd_in = cal.unit_bwd_input or [b / 2 for b in cal.unit_bwd]
    per = {"F": cal.unit_fwd, "B": cal.unit_bwd, "I": bwd_in, "W": [b - i for b, i in zip(cal.unit_bwd, bwd_in,
                                                                                             strict=True)]}

    def seconds(kind: str, s: int) -> float:
        return mb * sum(per[kind][i] for i in ranges[s])

    orders = [rank_order(schedule, r, ranks, micro_batches) for r in range(ranks)]
    crossing = max((cal.unit_out[r.stop - 1] * mb / cal.bandwidth for r in ranges[:-1]), default=0.0)
    step, busy = replay(orders, seconds, owners, crossing)
    memory = []
    for r, order in enumerate(orders):
        mine = [s for s, o in enumerate(owners) if o == r]
        params = sum(cal.unit_params[i] for s in mine for i in ranges[s])
        stash = peak_stash(order, lambda s: mb * sum(cal.unit_saved[i] for i in ranges[s]))
        messages = sum(2 * mb * cal.unit_out[ranges[s].start - 1] for s in mine if s > 0 and owners[s - 1] != r)
        memory.append(model_state(params, cal.state_buffers) + stash + messages)
    return Prediction(schedule, ranks, batch / step, [1 - b / step for b in busy], max(memory))


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
    """Every schedule at `stages` ranks: GPipe, 1F1B, Interleaved 1F1B and ZB-V (when the units make two stages
    a rank), the local pipeline and DDP."""
    looped = [looped_pipeline(cal, s, stages, batch, micro_batches) for s in ("interleaved", "zbv")
              if 2 * stages <= len(cal.unit_fwd) and micro_batches >= stages]
    return [pipeline(cal, "gpipe", stages, batch, micro_batches), pipeline(cal, "1f1b", stages, batch, micro_batches),
            *looped, local_pipeline(cal, stages, batch, inflight), data_parallel(cal, stages, batch)]


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


def _input_gradient(forward: Callable[[], torch.Tensor], inp: torch.Tensor) -> None:
    """A forward, then the gradient of its output with respect to `inp` only (no weight gradients)."""
    out = forward()
    torch.autograd.grad(out, inp, torch.ones_like(out))


def calibrate_units(e2e: LocalNetwork, x: torch.Tensor, repeats: int = 3,
                    split_backward: bool = False) -> dict[str, list[float]]:
    """Per unit of an end-to-end network (K = 1): forward and backward seconds, saved and output bytes, per image;
    with `split_backward`, also the seconds of the backward's input-gradient part (`unit_bwd_input`)."""
    units, n = list(e2e.blocks[0]), x.shape[0]
    out: dict[str, list[float]] = {"unit_fwd": [], "unit_bwd": [], "unit_saved": [], "unit_out": [], "unit_params": []}
    if split_backward:
        out["unit_bwd_input"] = []
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
        if split_backward:  # every unit's input taken as needing a gradient (the first's too: ZB-V's I of stage 0)
            inp = h.detach().requires_grad_()
            grad = best_time(partial(_input_gradient, partial(_unit_forward, unit, e2e.classifier if i == len(units)
                                                             - 1 else None, inp), inp), repeats)
            out["unit_bwd_input"].append(min(max(grad - fwd, 0.0) / n, out["unit_bwd"][-1]))
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
    return Calibration(batch, **calibrate_units(e2e, x, repeats, split_backward=True),
                       **calibrate_modules(net, x, y, repeats),
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
            lines.append(f"| {p} | {m if r.schedule not in ('local', 'ddp') else '—'} | {r.schedule} | "
                         f"{r.images_per_s:.1f} | {r.bubble:.2f} | {r.memory_bytes / 2**20:.1f} | "
                         f"{f'{ratio:.2f}' if r.schedule == 'local' else ''} |")
    return "\n".join(lines)
