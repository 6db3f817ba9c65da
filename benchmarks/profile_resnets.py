"""Measured memory and speed of local learning: writes the profile section of docs/benchmarks.md.

Three parts, all real training steps on synthetic batches (`contsup.profile.runner`):
1. ResNet-32 and ResNet-110 at K = 1, 2, 4, 8, 16 for R0, E, R1, R1E: peak step memory, saved tensors,
   step time, parameters and FLOPs; a plot of memory and step time against K.
2. Step time of ResNet-32 at K = 16 against E2E on 1x28x28 (Fashion-MNIST shape), default memory
   format and channels_last, with the step-time targets.
3. The automatic memory-balanced cuts against the paper's hand-made CIFAR-10 tables.

    PYTHONPATH=src python benchmarks/profile_resnets.py            # the whole benchmark
    PYTHONPATH=src python benchmarks/profile_resnets.py --batch 64 # a smaller batch for a busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from contsup.method.balance import memory_model
from contsup.method.context import parse_mode
from contsup.method.cuts import PAPER_CUTS, balanced_cuts, from_named
from contsup.models import probe_shapes, resnet
from contsup.profile.runner import E2E, MIB, ProfileConfig, ProfileRow, format_table, machine, plot, profile_one
from docregion import write_region

ROOT = Path(__file__).resolve().parents[1]
MODES = ("R0", "E", "R1", "R1E")
KS = (1, 2, 4, 8, 16)
SPEED_TARGETS = {"R0": 1.25, "R1": 1.45, "R1E": 2.3}


def log(msg: str) -> None:
    """Progress on stderr-like stdout, with the load."""
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


def run(cfg: ProfileConfig, modules: int, context: str) -> ProfileRow:
    """One configuration, logged."""
    row = profile_one(cfg, modules, context)
    log(f"{cfg.arch} K={modules} {row.context} batch {cfg.batch_size}: peak {row.peak_bytes / MIB:.1f} MiB, "
        f"{row.step_ms:.0f} ms")
    return row


def sweep(args: argparse.Namespace) -> tuple[list[ProfileRow], str]:
    """Part 1: both networks over K and modes."""
    rows = []
    for arch in ("resnet32", "resnet110"):
        cfg = ProfileConfig(arch=arch, batch_size=args.batch, input_shape=(3, 32, 32), warmup=args.warmup,
                            steps=args.steps, device=args.device, channels_last=args.channels_last)
        rows.append(run(cfg, 1, E2E))
        rows += [run(cfg, k, m) for k in KS if k > 1 for m in MODES]
        pooled = replace(cfg, local={"image_encoder": "pooled"})
        rows += [run(pooled, 16, m) for m in ("E", "R1E")]
    lines = [format_table(rows, markdown=True), ""]
    for arch in ("resnet32", "resnet110"):
        mine = {(r.modules, r.context): r for r in rows if r.arch == arch}
        e2e = mine[(1, E2E)]
        for m in (*MODES, "E (pooled)", "R1E (pooled)"):
            r = mine[(16, m)]
            lines.append(f"- {arch}: E2E peak / K=16 {m} peak = {e2e.peak_bytes / r.peak_bytes:.2f}x "
                         f"(with parameter and optimizer state added to both: "
                         f"{(e2e.peak_bytes + e2e.state_bytes) / (r.peak_bytes + r.state_bytes):.2f}x)")
        for m in ("E", "R1", "R1E"):
            over = [mine[(k, m)].peak_bytes / mine[(k, "R0")].peak_bytes - 1 for k in KS if k > 1]
            lines.append(f"- {arch}: {m} memory over R0 at the same K (K=2..16): "
                         + ", ".join(f"{100 * o:+.1f}%" for o in over))
        for m in ("E (pooled)", "R1E (pooled)"):
            lines.append(f"- {arch}: {m} memory over R0 at K=16: "
                         f"{100 * (mine[(16, m)].peak_bytes / mine[(16, 'R0')].peak_bytes - 1):+.1f}%")
    return rows, "\n".join(lines)


def speed(args: argparse.Namespace) -> str:
    """Part 2: ResNet-32, K = 16 against E2E on 1x28x28, default memory format and channels_last."""
    table = ["| memory format | E2E | R0 | R1 | E | R1E | ratios to E2E |", "|---" * 7 + "|"]
    checks = []
    for channels_last in (False, True):
        cfg = ProfileConfig(arch="resnet32", batch_size=args.speed_batch, input_shape=(1, 28, 28),
                            warmup=args.warmup, steps=args.steps, device=args.device, channels_last=channels_last,
                            memory=False, flops=False)
        rows = [run(cfg, 1, E2E)] + [run(cfg, 16, m) for m in ("R0", "R1", "E", "R1E")]
        ratios = {r.context: r.step_ms / rows[0].step_ms for r in rows[1:]}
        name = "channels_last" if channels_last else "contiguous (default)"
        table.append(f"| {name} | " + " | ".join(f"{r.step_ms:.0f} ms" for r in rows) + " | "
                     + ", ".join(f"{m} {x:.2f}x" for m, x in ratios.items()) + " |")
        checks.append(f"- {name}: " + "; ".join(
            f"{m} {ratios[m]:.2f}x (target <= {t}x: {'met' if ratios[m] <= t else 'missed'})"
            for m, t in SPEED_TARGETS.items()))
        pooled = [run(replace(cfg, local={"image_encoder": "pooled"}), 16, m) for m in ("E", "R1E")]
        table.append(f"| {name}, pooled image encoder (not the paper's) | {rows[0].step_ms:.0f} ms | - | - | "
                     + " | ".join(f"{r.step_ms:.0f} ms" for r in pooled) + " | "
                     + ", ".join(f"{r.context} {r.step_ms / rows[0].step_ms:.2f}x" for r in pooled) + " |")
    return "\n".join(table) + "\n\n" + "\n".join(checks) + "\n\n" + top_ops(args)


def top_ops(args: argparse.Namespace, count: int = 8) -> str:
    """Where a K = 16 R1E step spends its time: the profiler's top operators, in both memory formats."""
    from torch.profiler import ProfilerActivity, profile

    from contsup.method.step import local_step
    from contsup.profile.runner import build
    from contsup.train.trainer import resolve_device

    device = resolve_device(args.device)
    columns = []
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        cfg = ProfileConfig(arch="resnet32", input_shape=(1, 28, 28), device=args.device)
        net = build(cfg, 16, "R1E", device).to(memory_format=fmt)
        x = torch.randn(args.speed_batch, 1, 28, 28, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (args.speed_batch,), device=device)
        local_step(net, x, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            local_step(net, x, y)
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops)
        columns.append([f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in ops[:count]])
    rows = ["| rank | contiguous | channels_last |", "|---|---|---|"]
    rows += [f"| {i + 1} | {a} | {b} |" for i, (a, b) in enumerate(zip(*columns, strict=True))]
    return ("Profiler, one ResNet-32 K=16 R1E local step (share of self CPU time):\n\n" + "\n".join(rows))


def balance(args: argparse.Namespace) -> str:
    """Part 3: the rule's cuts against the paper's memory-balanced CIFAR-10 tables (R0, 3x32x32)."""
    lines = ["| net | K | paper cuts | rule cuts | model: largest module, paper / rule (KiB per sample) "
             "| measured peak, paper / rule (MiB) |", "|---|---|---|---|---|---|"]
    sample = torch.zeros(1, 3, 32, 32)
    for (arch, k), named in PAPER_CUTS["balanced-cifar10"].items():
        if k == 16:
            continue  # the paper's K = 16 table is its equal-layer one
        net = resnet(int(arch[6:]))
        units = list(net.units)
        shapes = probe_shapes(units, sample)
        model = memory_model(units, net.classifier, sample, shapes, parse_mode("R0", k), "1c2f", "softmax", 10)
        rule = balanced_cuts(model[0], k, model[1], model[2])
        paper = from_named(named, net.unit_names)

        def largest(cuts: list[int], model: tuple = model, n: int = len(units)) -> float:
            bounds = [0, *(c + 1 for c in cuts), n]
            return max(sum(model[0][a:b]) + model[1][b - 1] + model[2][a]
                       for a, b in zip(bounds, bounds[1:], strict=False))

        measured = []
        for cuts in (paper, rule):
            cfg = ProfileConfig(arch=arch, batch_size=args.batch, warmup=1, steps=0, device=args.device,
                                channels_last=args.channels_last, flops=False,
                                local={"cuts": cuts})
            measured.append(run(cfg, k, "R0").peak_bytes / MIB)
        names = [net.unit_names[c] for c in rule]
        lines.append(f"| {arch} | {k} | {' '.join(f'{s}.{b}' for s, b in named)} | "
                     f"{' '.join(f'{s}.{b}' for s, b in names)} | {largest(paper) / 1024:.0f} / "
                     f"{largest(rule) / 1024:.0f} | {measured[0]:.1f} / {measured[1]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and write its section of docs/benchmarks.md (and a plot next to it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128, help="batch of the K sweep and the balanced cuts (3x32x32)")
    p.add_argument("--speed-batch", type=int, default=128, help="batch of the step-time comparison (1x28x28)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--channels-last", action="store_true", help="channels_last in the K sweep too")
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--parts", default="sweep,speed,balance")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start, load0 = time.perf_counter(), os.getloadavg()
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    sections = []
    command = "PYTHONPATH=src python benchmarks/profile_resnets.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k in ("batch", "speed_batch", "threads", "warmup", "steps", "device"))
    if "sweep" in parts:
        rows, text = sweep(args)
        plot(rows, doc.parent / "profile_resnets.png", title=f"batch {args.batch}, 3x32x32, {args.threads} threads")
        (doc.parent / "profile_resnets.json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
        sections.append(f"### Memory and step time over K (batch {args.batch}, 3x32x32)\n\n"
                        "`peak MiB`: peak tensor memory allocated during one training step (zero_grad, local step, "
                        "SGD step) above what was allocated when it started, measured "
                        f"({rows[0].peak_method}). `saved MiB`: most bytes saved for backward alive at once "
                        "(saved-tensor hooks; the cross-check). `state MiB`: parameters, buffers and optimizer "
                        "state, held between steps. FLOPs from `torch.utils.flop_counter` (convs and matmuls, "
                        "forward and backward).\n\n" + text + "\n\n![memory and step time against K]"
                        "(profile_resnets.png)\n\nRows: `docs/profile_resnets.json`.")
    if "speed" in parts:
        sections.append(f"### Step time, ResNet-32 at K = 16 against E2E (batch {args.speed_batch}, 1x28x28)\n\n"
                        + speed(args))
    if "balance" in parts:
        sections.append("### Memory-balanced cuts: the rule against the paper's tables (CIFAR-10, R0)\n\n"
                        "The rule (`--cuts balanced`) minimises the largest module's memory under the model of "
                        "`contsup.method.balance` (saved-for-backward bytes of units, head and encoders). "
                        f"Measured peaks at batch {args.batch}, 3x32x32.\n\n" + balance(args))
    info = machine()
    header = (f"## Memory and speed (`contsup profile`)\n\nMachine: {info['processor']}, {info['cpu_count']} CPUs, "
              f"{args.threads} torch threads, GPU: {info['cuda'] or 'none'}, torch {info['torch']}, device "
              f"{args.device}. Load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} "
              f"(other jobs shared the CPU; timings are noisy when it is above the core count). "
              f"Whole script: {time.perf_counter() - start:.0f} s.\n\nCommand: `{command}`"
              + (" --channels-last" if args.channels_last else "") + "\n")
    write_region(doc, "profile", "\n\n".join([header, *sections]))
    log(f"wrote {doc}")


if __name__ == "__main__":
    main()
