"""Checkpointed end-to-end training against plain end-to-end: step peak memory, step time, lower bounds.

For one network (default ResNet-32 on 1x28x28 at batch 128): E2E plain, and E2E with its units checkpointed
(contsup.method.checkpointing) in sqrt(units) segments or the counts given. Each row: the measured peak of one
training step (the step `contsup profile` and `step_peak` measure: above what lived before it, gradients
included), the state between steps (parameters, buffers, SGD momentum) and the best of 3 step times (forward,
backward, optimizer step). Then the lower bounds (contsup.profile.bound) of the E2E and of the balanced K = 16
cut tables, to compare with peak + state.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/checkpoint_memory.py
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/checkpoint_memory.py --segments sqrt,8,16
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/checkpoint_memory.py --arch resnet110 --batch-size 1024
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from contsup.config import TrainConfig
from contsup.method.checkpointing import CheckpointedSequential
from contsup.method.local_step import local_step
from contsup.method.network import LocalNetwork
from contsup.profile.bound import lower_bound
from contsup.profile.runner import E2E, ProfileConfig, build, state_bytes
from contsup.tables import text_table
from contsup.train.peak import step_peak
from contsup.train.trainer import make_optimizer

MIB = 2**20
CPU = torch.device("cpu")


def best_step_ms(net: LocalNetwork, batch_size: int, repeats: int) -> tuple[float, int]:
    """(best of `repeats` step times in ms after one warm-up step, state bytes after the steps)."""
    optimizer = make_optimizer(net.parameters(), TrainConfig(lr=0.01))
    g = torch.Generator().manual_seed(0)
    shape = net.source_shapes[0]
    x = torch.randn(batch_size, shape.channels, shape.height, shape.width, generator=g)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        local_step(net, x, y)
        optimizer.step()
        if i:
            times.append(1000 * (time.perf_counter() - start))
    optimizer.zero_grad(set_to_none=True)
    return min(times), state_bytes(net, optimizer)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input", default="1,28,28", help="channels,height,width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--segments", default="sqrt", help="checkpointed rows: segment counts or sqrt, comma-separated")
    args = parser.parse_args()
    cfg = ProfileConfig(arch=args.arch, input_shape=tuple(int(v) for v in args.input.split(",")), cut_table="balanced")
    rows = []
    choices = [0, *(v if v == "sqrt" else int(v) for v in args.segments.split(","))]
    for segments in choices:
        net = build(cfg, 1, E2E, CPU)
        net.blocks[0] = CheckpointedSequential(*net.blocks[0], segments=segments)
        peak = step_peak(net, args.batch_size, CPU).peak_bytes
        ms, state = best_step_ms(net, args.batch_size, args.repeats)
        label = f"E2E checkpointed ({segments})" if segments else "E2E"
        rows.append([label, f"{net.blocks[0].segments}", f"{peak / MIB:.1f}", f"{state / MIB:.2f}",
                     f"{(peak + state) / MIB:.1f}", f"{ms:.0f}"])
    for k in (1, 16):
        bound = lower_bound(build(cfg, k, E2E if k == 1 else "R0", CPU), args.batch_size)
        rows.append([f"lower bound K={k} (module {bound.module})", "-", f"{bound.activations / MIB:.1f}",
                     f"{(bound.total - bound.activations) / MIB:.2f}", f"{bound.total / MIB:.1f}", "-"])
    print(f"{args.arch}, {args.input} at batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f} (1 min, after)")
    header = ["configuration", "segments", "peak MiB", "state MiB", "peak + state MiB", "best step ms"]
    print(text_table(header, rows))
    print("lower bound rows: 'peak' = the largest module's saved activations, 'state' = parameters, their "
          "gradients, SGD momentum and buffers")


if __name__ == "__main__":
    main()
