"""Two ways to speed up the context encoders that were measured and not adopted: writes docs/benchmarks.md.

1. `fused`: the image encoders of all 15 cuts of ResNet-32 K = 16 read the same x. Run together, their first
   convolutions are one conv (1 -> 15 x 12 channels) and the second convolutions of the cuts of one stage are
   one grouped conv (same function: BatchNorm is per channel). Timed forward + backward against the 15
   encoders one by one (autograd, as `--no-lean-context` runs them); the outputs and gradients are checked
   equal first. A variant fuses only the first convolutions.
2. `compile`: `torch.compile` on every block, head, the classifier and the cut encoders of a K = 16 network
   (E2E: its one block and the classifier): the first step (compile time included) and the median step, compiled
   against eager, in one run.

Timings need a quiet machine (the load average is written next to them).

    PYTHONPATH=src python benchmarks/speed_options.py                 # both parts (~10 min on 2 cores)
    PYTHONPATH=src python benchmarks/speed_options.py --parts fused
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from contsup.method.context import ImageEncoder
from contsup.method.local_step import local_step
from contsup.profile.runner import E2E, ProfileConfig, build, machine
from docregion import write_region

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    """The 1-minute load average, for the record."""
    return f"{os.getloadavg()[0]:.1f}"


def timed(fn: Callable[[], object], steps: int) -> list[float]:
    """Wall-clock milliseconds of `steps` calls of fn."""
    out = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return out


def bn_relu(a: torch.Tensor, bns: list[nn.BatchNorm2d]) -> torch.Tensor:
    """Training-mode BatchNorm with the concatenated affine parameters of `bns` (channel by channel), ReLU."""
    gamma, beta = torch.cat([b.weight for b in bns]), torch.cat([b.bias for b in bns])
    return F.relu(F.batch_norm(a, None, None, gamma, beta, True, 0.0, bns[0].eps))


def fused_encoders(encs: list[ImageEncoder], x: torch.Tensor, grouped: bool) -> list[torch.Tensor]:
    """Every image encoder's output on x, the first convolutions as one conv; the second grouped by stage if asked."""
    conv1 = [e.net[0] for e in encs]
    w1, b1 = torch.cat([c.weight for c in conv1]), torch.cat([c.bias for c in conv1])
    hidden = bn_relu(F.conv2d(x, w1, b1, padding=1), [e.net[1] for e in encs])
    width = conv1[0].out_channels  # hidden channels per encoder
    parts = hidden.split(width, 1)
    if not grouped:
        return [e.pool(e.net[3:](h)) for e, h in zip(encs, parts, strict=True)]
    out: list[torch.Tensor | None] = [None] * len(encs)
    stages: dict[int, list[int]] = {}
    for i, e in enumerate(encs):
        stages.setdefault(e.net[3].out_channels, []).append(i)
    for channels, idx in stages.items():
        conv2 = [encs[i].net[3] for i in idx]
        w2, b2 = torch.cat([c.weight for c in conv2]), torch.cat([c.bias for c in conv2])
        h = hidden.narrow(1, width * idx[0], width * len(idx))  # a stage's cuts are consecutive
        y = bn_relu(F.conv2d(h, w2, b2, padding=1, groups=len(idx)), [encs[i].net[4] for i in idx])
        for i, part in zip(idx, y.split(channels, 1), strict=True):
            out[i] = encs[i].pool(part)
    return out  # type: ignore[return-value]


def check_same(encs: list[ImageEncoder], batch: int) -> None:
    """The fused ways compute the encoders' function: outputs and gradients equal one by one's, in float64."""
    encs = [copy.deepcopy(e).double() for e in encs]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 28, 28, generator=g, dtype=torch.float64)
    results = []
    for grouped in (None, False, True):
        for e in encs:
            e.zero_grad(set_to_none=True)
        outs = [e(x) for e in encs] if grouped is None else fused_encoders(encs, x, grouped)
        g = torch.Generator().manual_seed(2)
        torch.autograd.backward(outs, [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outs])
        results.append([*outs, *(p.grad for e in encs for p in e.parameters())])
    for got in results[1:]:
        if not all(torch.allclose(a, b, rtol=1e-9, atol=1e-9) for a, b in zip(results[0], got, strict=True)):
            raise SystemExit("a fused way is not the same function as the encoders one by one")


def fused(args: argparse.Namespace) -> str:
    """Part 1: the 15 image encoders one by one against fused, forward + backward."""
    cfg = ProfileConfig(arch="resnet32", input_shape=(1, 28, 28), device="cpu", local={"lean_context": False})
    net = build(cfg, 16, "E", torch.device("cpu")).train()
    encs = [ctx.image for ctx in net.context]
    check_same(encs, 8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, generator=g)
    grads = [torch.randn(args.batch, s.channels, s.height, s.width, generator=g) for s in net.source_shapes[1:]]

    def run(outputs: Callable[[], list[torch.Tensor]]) -> None:
        net.zero_grad(set_to_none=True)
        torch.autograd.backward(outputs(), grads)

    ways = {
        "one by one (as now)": lambda: [e(x) for e in encs],
        "first convolutions fused": lambda: fused_encoders(encs, x, grouped=False),
        "fused: first conv + grouped second conv per stage": lambda: fused_encoders(encs, x, grouped=True),
    }
    start = load()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.steps):  # interleaved, so that a change of load hits every way alike
        for name, way in ways.items():
            times[name] += timed(lambda way=way: run(way), 1)
    base = statistics.median(times["one by one (as now)"])
    rows = ["| image encoders of ResNet-32 K=16 (E), forward + backward | median | against one by one |",
            "|---|---|---|"]
    rows += [f"| {name} | {statistics.median(t):.0f} ms | {statistics.median(t) / base:.2f}x |"
             for name, t in times.items()]
    return (f"Batch {args.batch}, 1x28x28, contiguous, {args.steps} interleaved repeats, load average {start} at "
            f"start, {load()} at end. Every way runs under autograd, as the straightforward encoders do (the lean "
            "ones recompute in backward, which fusing would not change); outputs and gradients of each way were "
            "checked equal to one by one's first (float64, within 1e-9).\n\n"
            + "\n".join(rows))


def compile_in_place(net: nn.Module) -> None:
    """torch.compile every block, head, the classifier and every cut's encoders, in place.

    The blocks, heads and encoders of one kind share their `forward`; dynamo's default recompile limit (8)
    would leave all but the first few to eager, so the limits are raised: every part is compiled.
    """
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    for parts in (net.blocks, net.heads, net.context):
        for i in range(len(parts)):
            parts[i] = torch.compile(parts[i])
    net.classifier = torch.compile(net.classifier)


def compile_part(args: argparse.Namespace) -> str:
    """Part 2: eager against torch.compile, E2E and K = 16 modes, first step and median step."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="contsup-inductor-")  # compile times uncached
    rows = ["| configuration | eager step | compiled: first step (compiles) | compiled step | compiled / eager |",
            "|---|---|---|---|---|"]
    start = load()
    for modules, context, local in ((1, E2E, {}), (16, "R0", {}), (16, "R1", {}), (16, "R1E", {}),
                                    (16, "R1E", {"lean_context": False})):
        cfg = ProfileConfig(arch="resnet32", input_shape=(1, 28, 28), device="cpu", local=local)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(args.batch, 1, 28, 28, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
        medians = []
        for compile_it in (False, True):
            net = build(cfg, modules, context, torch.device("cpu")).train()
            if compile_it:
                compile_in_place(net)
            step = functools.partial(local_step, net, x, y)
            first = timed(step, 1)[0]
            medians.append((first, statistics.median(timed(step, args.steps))))
        name = f"{context} K={modules}" + (" (straightforward encoders)" if local else "")
        rows.append(f"| {name} | {medians[0][1]:.0f} ms | {medians[1][0] / 1000:.1f} s | {medians[1][1]:.0f} ms | "
                    f"{medians[1][1] / medians[0][1]:.2f}x |")
    return (f"Batch {args.batch}, 1x28x28, contiguous, median of {args.steps} steps after the first, load "
            f"average {start} at start, {load()} at end.\n\n" + "\n".join(rows))


def main() -> None:
    """Run the parts asked for and write them to docs/benchmarks.md."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed repeats (after one untimed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parts", default="fused,compile", help="comma-separated: fused, compile")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    if not set(args.parts.split(",")) <= {"fused", "compile"}:
        p.error(f"--parts {args.parts!r}: choose from fused, compile")
    torch.set_num_threads(args.threads)
    command = ("`PYTHONPATH=src python benchmarks/speed_options.py --parts " + args.parts
               + f" --batch {args.batch} --steps {args.steps} --threads {args.threads}`")
    bodies = {"fused": ("Fused image encoders", fused), "compile": ("torch.compile", compile_part)}
    for part in args.parts.split(","):
        title, body = bodies[part]
        text = body(args)
        print(text, flush=True)
        info = machine()
        write_region(args.doc, f"speed-{part}", f"### {title} (measured, not adopted)\n\nMachine: {info['processor']}, "
                     f"{info['cpu_count']} CPUs, {args.threads} torch threads, torch {info['torch']}, CPU.\n\n"
                     f"Command: {command}\n\n{text}")


if __name__ == "__main__":
    main()
