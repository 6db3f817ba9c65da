"""Is the data loader ever the bottleneck? Batches/s of DeviceLoader against a ResNet-32 training step.

Run: `PYTHONPATH=src python benchmarks/loader.py` (writes the `loader` region of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from contsup.config import TrainConfig
from contsup.data import DeviceLoader, SyntheticOptions, load_dataset
from contsup.method import LocalConfig, LocalNetwork, local_step
from contsup.models import resnet
from contsup.train.trainer import make_optimizer
from docregion import write_region

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def loader_rate(loader: DeviceLoader, seconds: float) -> float:
    """Training batches per second (shuffle, crop, flip, normalise) over whole epochs."""
    done, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        loader.set_epoch(epoch)
        for _ in loader:
            done += 1
        epoch += 1
    return done / (time.perf_counter() - start)


def step_rate(shape: tuple[int, int, int], batch: int, steps: int) -> float:
    """ResNet-32 end-to-end training steps per second (forward, backward, SGD step), after one warm-up step."""
    sample = torch.zeros(1, *shape)
    net = LocalNetwork(resnet(32, shape[0], 10), LocalConfig(modules=1), sample)
    opt = make_optimizer(net.parameters(), TrainConfig(lr=0.1))
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        local_step(net, x, y)
        opt.step()
        times.append(time.perf_counter() - start)
    return 1.0 / sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    """Measure loader and step rates at batch 128 and 1024 and write the table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fmnist = load_dataset("fashion-mnist", download=False)
    cifar_like = load_dataset("synthetic", synthetic=SyntheticOptions(train=50000, test=16))
    rows = []
    for name, data in (("Fashion-MNIST 1x28x28", fmnist), ("CIFAR-shaped 3x32x32", cifar_like)):
        shape = (data.info.channels, data.info.size, data.info.size)
        for batch in (128, 1024):
            lb = loader_rate(DeviceLoader(data.train, data.info, batch, "cpu", train=True), args.seconds)
            sb = step_rate(shape, batch, args.steps)
            rows.append(f"| {name} | {batch} | {lb:.0f} | {sb:.2f} | {lb / sb:.0f}x |")
            print(rows[-1], flush=True)
    load = os.getloadavg()
    body = "\n".join([
        "## Data loader against a training step", "",
        "Training batches per second of `DeviceLoader` (seeded shuffle, padded random crop, flip, normalisation,",
        "all on the device) against ResNet-32 end-to-end training steps per second at the same batch.", "",
        f"Command: `PYTHONPATH=src python benchmarks/loader.py --threads {args.threads}`. Machine: "
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end.", "",
        "| data | batch | loader batches/s | ResNet-32 steps/s | loader / step |",
        "|---|---|---|---|---|", *rows,
    ])
    write_region(DOC, "loader", body)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
