"""Where to cut a backbone into K = 2 local modules so that a 2-rank pipeline's stages take equal time.

torch's pipeline schedules balance their stages by measured time (`--stage-units`, else by time); contsup's
local pipeline with one module a rank cannot move modules between ranks, so the cut itself must balance them.
For every candidate cut this times each module's local step (context supply, block, head, backward; the cost
model's `calibrate_modules`, one thread, one random batch) and prints the steps and the slower one: a 2-rank
pipeline runs at about the batch over the slower step. docs/parallel.md, "Balancing the local pipeline's stages".

    PYTHONPATH=src python benchmarks/cut_scan.py --arch resnet32 --context R0        # on a quiet machine
"""

from __future__ import annotations

import argparse

import torch

from contsup.config import DataConfig, LocalConfig, RunConfig, TrainConfig
from contsup.data import dataset_info
from contsup.distributed.costmodel import calibrate_modules
from contsup.run import build_network


def main() -> None:
    """Print each cut's two module steps (ms at the batch) and the cut whose slower step is fastest."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--dataset", default="fashion-mnist", help="sets the input's shape and the classes")
    p.add_argument("--context", default="R0")
    p.add_argument("--head", default="1c2f")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timings per module; the fastest counts")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    info = dataset_info(args.dataset)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, info.channels, info.size, info.size, generator=gen)
    y = torch.randint(0, info.num_classes, (args.batch_size,), generator=gen)

    def network(cuts: str | None) -> torch.nn.Module:
        """The K = 2 network cut after unit `cuts` (None: its default cut)."""
        local = LocalConfig(modules=2, context=args.context, head=args.head, cuts=cuts)
        cfg = RunConfig(DataConfig(args.dataset), args.arch, local, TrainConfig())
        return build_network(cfg, info.channels, info.num_classes, info.size).train()

    units = len(network(None).unit_labels)
    print(f"{args.arch}, K = 2 {args.context}, head {args.head}, batch {args.batch_size}, {args.threads} thread(s)")
    print("| cut after | module 0 step (ms) | module 1 step (ms) | slower (ms) |\n|---|---|---|---|")
    best = None
    for cut in range(units - 1):
        net = network(str(cut))
        ms = [1000 * args.batch_size * s for s in calibrate_modules(net, x, y, args.repeats)["module_step"]]
        print(f"| {net.cut_names[0]} (unit {cut}) | {ms[0]:.1f} | {ms[1]:.1f} | {max(ms):.1f} |", flush=True)
        if best is None or max(ms) < best[1]:
            best = (net.cut_names[0], max(ms))
    print(f"balanced: cut after {best[0]} (--cuts {best[0]}), the slower step {best[1]:.1f} ms")


if __name__ == "__main__":
    main()
