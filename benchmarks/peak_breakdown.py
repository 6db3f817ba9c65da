"""What one local step's memory peak holds: every tensor alive at the peak, grouped by what it is.

Runs one training step of a `contsup profile` configuration (after one warm-up step) under the PyTorch profiler,
replays its CPU allocation events in time order (the events `contsup profile` sums for its peak) and lists the
tensors alive at the highest point, in three groups:

- forward: allocated by a forward op, alive at the peak because autograd saved it for backward (or a module's
  input or output still held);
- backward: gradient buffers the autograd engine allocated and has not freed yet (parameter gradients apart);
- parameter gradients: the `.grad` tensors (every module's, accumulated until the optimizer step).

Within each group the ops that allocated the most are listed. Beside it: the cut table's lower bound
(`contsup.profile.bound`), whose activations part counts what the largest module and its head save for backward.
It reads the profiler's op tree through `torch.profiler._memory_profiler.OpTree`, a private PyTorch API.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/peak_breakdown.py --arch resnet110 -K 16 --context R1E
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/peak_breakdown.py --arch resnet110 -K 16 --context R1E \\
        --checkpoint-segments 8
"""

from __future__ import annotations

import argparse
import collections
import os

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile, record_function
from torch.profiler._memory_profiler import OpTree

from contsup.config import TrainConfig
from contsup.method.local_step import local_step, modules_step
from contsup.method.network import LocalNetwork
from contsup.method.objective import Targets
from contsup.profile.bound import lower_bound
from contsup.profile.runner import E2E, ProfileConfig, build
from contsup.train.optim import make_optimizer

MIB = 2**20
BACKWARD = "autograd::engine::evaluate_function"


Live = dict[int, tuple[int, list[str]]]  # address -> (bytes, allocating op chain, innermost first)


def live_at_peak(events: list[tuple[int, int, int, list[str]]]) -> tuple[int, Live, list[str]]:
    """(peak bytes above the start, the allocations alive then, the op chain of the allocation that reached it)."""
    live: Live = {}
    current = peak = 0
    at_peak: Live = {}
    where: list[str] = []
    for _, ptr, size, chain in sorted(events, key=lambda e: e[0]):
        if size > 0:
            live[ptr] = (size, chain)
            current += size
        elif ptr in live:  # frees of blocks allocated before the step are not counted (as in contsup profile)
            current -= live.pop(ptr)[0]
        if current > peak:
            peak, at_peak, where = current, dict(live), chain
    return peak, at_peak, where


def labelled_step(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor) -> None:
    """`local_step`, each module's step inside a profiler range named "module k" (the same computation)."""
    held, sources = [x], {0: x}  # the list lets modules_step free module k-1's output, as in local_step
    for k in range(net.num_modules):
        with record_function(f"module {k}"):
            held.append(modules_step(net, range(k, k + 1), held.pop(), sources, Targets(y))[0])


def step_events(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, int, int, list[str]]]:
    """Run `labelled_step` under the profiler: its CPU allocations and frees as (time, address, bytes, op chain)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
        labelled_step(net, x, y)
    events = []
    for event in OpTree(prof.profiler.kineto_results).dfs():  # type: ignore[arg-type]
        if event.typed[0] == _EventType.Allocation:
            chain, parent = [], event.parent
            while parent is not None:
                chain.append(parent.name)
                parent = parent.parent
            events.append((event.start_time_ns, event.typed[1].ptr, event.typed[1].alloc_size, chain))
    return events


def main() -> None:
    """Measure one step and print what its peak holds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet110")
    parser.add_argument("-K", "--modules", type=int, default=16)
    parser.add_argument("--context", default="R1E")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input", default="3,32,32", help="channels,height,width")
    parser.add_argument("--cuts", default="balanced")
    parser.add_argument("--head", default="1c2f")
    parser.add_argument("--checkpoint-segments", default="0")
    parser.add_argument("--channels-last", action="store_true", help="the network and batch in channels_last")
    parser.add_argument("--lean-norm", action="store_true", help="BatchNorm's lean backward (LocalConfig.lean_norm)")
    parser.add_argument("--top", type=int, default=4, help="ops listed per group")
    args = parser.parse_args()
    segments = args.checkpoint_segments if args.checkpoint_segments == "sqrt" else int(args.checkpoint_segments)
    cfg = ProfileConfig(arch=args.arch, batch_size=args.batch_size, cut_table=args.cuts, head=args.head,
                        input_shape=tuple(int(v) for v in args.input.split(",")), local={"lean_norm": args.lean_norm})
    context = E2E if args.modules == 1 else args.context
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    net = build(cfg, args.modules, context, torch.device("cpu"), segments).train().to(memory_format=fmt)
    optimizer = make_optimizer(net.named_parameters(), TrainConfig(lr=0.01))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, *cfg.input_shape, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, cfg.num_classes, (args.batch_size,), generator=g)
    local_step(net, x, y)  # warm-up: the optimizer's momentum exists from here on, as in a training run
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    peak, live, where = live_at_peak(step_events(net, x, y))
    grads = {p.grad.untyped_storage().data_ptr() for p in net.parameters() if p.grad is not None}
    groups: dict[str, collections.Counter] = {g: collections.Counter() for g in ("forward", "backward", "grads")}
    counts: collections.Counter = collections.Counter()
    for ptr, (size, chain) in live.items():
        group = "grads" if ptr in grads else "backward" if any(BACKWARD in c for c in chain) else "forward"
        op = next((c for c in chain if c.startswith("aten::") and c not in ("aten::empty", "aten::empty_like")),
                  chain[0] if chain else "?")
        groups[group][op] += size
        counts[group, op] += 1
    bound = lower_bound(net, args.batch_size)
    print(f"{args.arch} K={args.modules} {context} cuts {list(net.cuts)} checkpoint segments {segments}, "
          f"batch {args.batch_size}, input {args.input}, {fmt}{', lean norm' if args.lean_norm else ''}; "
          f"torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"step peak {peak / MIB:.1f} MiB above the step's start; the bound's activations "
          f"(module {bound.module} and its head, saved for backward) {bound.activations / MIB:.1f} MiB")
    print("the peak falls in: " + " < ".join(c for c in where if c.startswith(("module ", BACKWARD)) or
                                                 c.startswith("aten::"))[:300])
    for group, ops in groups.items():
        print(f"  {group:9s} {sum(ops.values()) / MIB:8.1f} MiB")
        for op, size in ops.most_common(args.top):
            print(f"      {size / MIB:8.1f} MiB  {counts[group, op]:4d} x {op}")


if __name__ == "__main__":
    main()
