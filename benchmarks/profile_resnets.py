"""Measured memory and speed of local learning: writes the profile sections of docs/benchmarks.md.

Three parts, all real training steps on synthetic batches (`contsup.profile.runner`), each written to
its own region of the doc, so that one part can be rerun alone:
1. `sweep`: ResNet-32 and ResNet-110 at K = 1, 2, 4, 8, 16 for R0, E, R1, R1E (lean context encoders, the
   default), the straightforward encoders and the pooled image encoder at K = 16, and ResNet-110 K = 16 at
   the memory-balanced cuts: peak step memory, saved tensors, step time, parameters and FLOPs; the memory
   targets; a plot of memory and step time against K. Memory does not depend on the machine's load.
2. `speed`: step time of ResNet-32 at K = 16 against E2E on 1x28x28 (Fashion-MNIST shape), lean and
   straightforward encoders, default memory format and channels_last, with the step-time targets and the
   profiler's top operators. Needs a quiet machine (a few minutes).
3. `balance`: the automatic memory-balanced cuts against the paper's hand-made CIFAR-10 tables.

    PYTHONPATH=src python benchmarks/profile_resnets.py                # every part
    PYTHONPATH=src python benchmarks/profile_resnets.py --parts speed  # only the step times
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from contsup.method.context import parse_mode
from contsup.method.cuts.balance import memory_model
from contsup.method.cuts.rules import PAPER_CUTS, balanced_cuts, from_named
from contsup.models import probe_shapes, resnet
from contsup.profile.runner import E2E, MIB, ProfileConfig, ProfileRow, format_table, machine, plot, profile_one
from docregion import write_region

ROOT = Path(__file__).resolve().parents[1]
MODES = ("R0", "E", "R1", "R1E")
CONTEXT_MODES = ("E", "R1", "R1E")
KS = (1, 2, 4, 8, 16)
SPEED_TARGETS = {"R0": 1.25, "R1": 1.5, "R1E": 2.5}
MEMORY_TARGETS = {"resnet32": 1.25, "resnet110": 1.05}  # R1E peak / R0 peak at K = 16, same cuts
E2E_TARGET = 8.0  # ResNet-110: E2E peak / K = 16 R1E peak, any cut rule
STRAIGHT = {"lean_context": False}
POOLED = {"image_encoder": "pooled"}


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
    """Part 1: both networks over K and modes, the other encoders at K = 16, balanced cuts at ResNet-110."""
    rows = []
    for arch in ("resnet32", "resnet110"):
        cfg = ProfileConfig(arch=arch, batch_size=args.batch, input_shape=(3, 32, 32), warmup=args.warmup,
                            steps=args.steps, device=args.device, channels_last=args.channels_last)
        rows.append(run(cfg, 1, E2E))
        rows += [run(cfg, k, m) for k in args.ks if k > 1 for m in MODES]
        rows += [run(replace(cfg, local=STRAIGHT), 16, m) for m in CONTEXT_MODES]
        rows += [run(replace(cfg, local=POOLED), 16, m) for m in ("E", "R1E")]
    lines = [format_table(rows, markdown=True), ""]
    for arch in ("resnet32", "resnet110"):
        mine = {(r.modules, r.context): r for r in rows if r.arch == arch}
        e2e, r0, r1e = mine[(1, E2E)], mine[(16, "R0")], mine[(16, "R1E")]
        lines.append(f"- {arch}: E2E peak / K=16 peak: " + ", ".join(
            f"{m} {e2e.peak_bytes / r.peak_bytes:.2f}x" for (k, m), r in mine.items() if k == 16)
            + f" (parameter and optimizer state added to both, R1E: "
            f"{(e2e.peak_bytes + e2e.state_bytes) / (r1e.peak_bytes + r1e.state_bytes):.2f}x)")
        for m in CONTEXT_MODES:
            over = [mine[(k, m)].peak_bytes / mine[(k, "R0")].peak_bytes - 1 for k in args.ks if k > 1]
            lines.append(f"- {arch}: {m} memory over R0 at the same K (K={', '.join(map(str, args.ks[1:]))}): "
                         + ", ".join(f"{100 * o:+.1f}%" for o in over))
        for m in CONTEXT_MODES:
            lean, straight = mine[(16, m)], mine[(16, f"{m} (straightforward)")]
            over = [100 * (r.peak_bytes / r0.peak_bytes - 1) for r in (lean, straight)]
            lines.append(f"- {arch} K=16 {m}: lean encoders {lean.peak_bytes / MIB:.1f} MiB, straightforward "
                         f"{straight.peak_bytes / MIB:.1f} MiB (over R0: {over[0]:+.1f}% against {over[1]:+.1f}%); "
                         "step time lean / "
                         f"straightforward {lean.step_ms / straight.step_ms:.2f}x (this run's load)")
        ratio = r1e.peak_bytes / r0.peak_bytes
        lines.append(f"- {arch}: target R1E peak <= {MEMORY_TARGETS[arch]}x R0 at K=16, same cuts: {ratio:.3f}x "
                     f"({'met' if ratio <= MEMORY_TARGETS[arch] else 'missed'})")
    text = "\n".join(lines) + "\n\n" + balanced_k16(args, rows)
    return rows, text


def balanced_k16(args: argparse.Namespace, rows: list[ProfileRow]) -> str:
    """ResNet-110 at K = 16 with the memory-balanced cut rule (lean encoders): E2E / R1E and R1E / R0."""
    cfg = ProfileConfig(arch="resnet110", batch_size=args.batch, input_shape=(3, 32, 32), warmup=1, steps=0,
                        device=args.device, channels_last=args.channels_last, flops=False, cut_table="balanced")
    e2e = next(r for r in rows if r.arch == "resnet110" and r.context == E2E)
    paper = {r.context: r for r in rows if r.arch == "resnet110" and r.modules == 16}
    lines = ["| cuts | R0 peak MiB | R1E peak MiB | R1E / R0 | E2E / R1E |", "|---|---|---|---|---|"]
    for name, got in (("auto (the paper's equal cuts)", paper), ("balanced (rule, R1E model)", None)):
        if got is None:
            got = {m: run(cfg, 16, m) for m in ("R0", "R1E")}
        r0, r1e = got["R0"], got["R1E"]
        lines.append(f"| {name}: {' '.join(map(str, r1e.cuts))} | {r0.peak_bytes / MIB:.1f} | "
                     f"{r1e.peak_bytes / MIB:.1f} | {r1e.peak_bytes / r0.peak_bytes:.3f}x | "
                     f"{e2e.peak_bytes / r1e.peak_bytes:.2f}x |")
    best = max(e2e.peak_bytes / ln for ln in (paper["R1E"].peak_bytes, got["R1E"].peak_bytes))
    return ("ResNet-110, K = 16, lean encoders, by cut rule (unit indices after which a cut falls; with "
            "`--cuts balanced` R0 and R1E are balanced each under its own memory model, so their cuts may "
            "differ):\n\n" + "\n".join(lines) + f"\n\n- resnet110: target E2E peak / K=16 R1E peak >= "
            f"{E2E_TARGET}x (any cut rule): {best:.2f}x ({'met' if best >= E2E_TARGET else 'missed'})")


def speed(args: argparse.Namespace) -> str:
    """Part 2: ResNet-32, K = 16 against E2E on 1x28x28: lean and straightforward encoders, both memory formats."""
    table = ["| memory format, encoders | E2E | R0 | R1 | E | R1E | ratios to E2E |", "|---" * 7 + "|"]
    checks = []
    for channels_last in (False, True):
        cfg = ProfileConfig(arch="resnet32", batch_size=args.speed_batch, input_shape=(1, 28, 28),
                            warmup=args.warmup, steps=args.steps, device=args.device, channels_last=channels_last,
                            memory=False, flops=not channels_last)
        fmt = "channels_last" if channels_last else "contiguous (default)"
        e2e = run(cfg, 1, E2E)
        lean = {r.context: r for r in [run(cfg, 16, m) for m in ("R0", "R1", "E", "R1E")]}
        straight = [run(replace(cfg, local=STRAIGHT), 16, m) for m in ("R1", "E", "R1E")]
        pooled = [run(replace(cfg, local=POOLED), 16, m) for m in ("E", "R1E")]
        for name, group, lead in ((f"{fmt}, lean", list(lean.values()), ""),
                                  (f"{fmt}, straightforward", straight, " - |"),
                                  (f"{fmt}, lean, pooled image encoder (not the paper's)", pooled, " - | - |")):
            table.append(f"| {name} | {e2e.step_ms:.0f} ms |{lead} " + " | ".join(f"{r.step_ms:.0f} ms" for r in group)
                         + " | " + ", ".join(f"{r.context} {r.step_ms / e2e.step_ms:.2f}x" for r in group) + " |")
        if not channels_last:  # FLOPs do not depend on the memory format
            checks.append("- FLOPs of a step (forward and backward, recomputation included) against E2E's "
                          f"{e2e.flops['total'] / 1e9:.1f} GFLOP, the ratio an equally efficient step would "
                          "take: " + ", ".join(f"{r.context} {r.flops['total'] / e2e.flops['total']:.2f}x"
                                               for r in [*lean.values(), *straight, *pooled]))
        checks.append(f"- {fmt}, lean: " + "; ".join(
            f"{m} {lean[m].step_ms / e2e.step_ms:.2f}x (target <= {t}x: "
            f"{'met' if lean[m].step_ms / e2e.step_ms <= t else 'missed'})" for m, t in SPEED_TARGETS.items()))
        checks.append(f"- {fmt}: time of the lean encoders, lean / straightforward step: " + ", ".join(
            f"{r.context.split()[0]} {lean[r.context.split()[0]].step_ms / r.step_ms:.2f}x" for r in straight))
    checks.append("- channels_last rows: `contsup train --channels-last` (off by default, on the CPU as on CUDA)")
    return "\n".join(table) + "\n\n" + "\n".join(checks) + "\n\n" + top_ops(args)


def top_ops(args: argparse.Namespace, count: int = 8) -> str:
    """Where a K = 16 R1E step spends its time: the profiler's top operators, in both memory formats."""
    from torch.profiler import ProfilerActivity, profile

    from contsup.device import resolve_device
    from contsup.method.local_step import local_step
    from contsup.profile.runner import build

    device = resolve_device(args.device)
    columns = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        cfg = ProfileConfig(arch="resnet32", input_shape=(1, 28, 28), device=args.device)
        net = build(cfg, 16, "R1E", device).to(memory_format=fmt)
        x = torch.randn(args.speed_batch, 1, 28, 28, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (args.speed_batch,), device=device)
        local_step(net, x, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            local_step(net, x, y)
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops)
        encoders = {e.key: e.cpu_time_total / total for e in ops if e.key.startswith("_LeanEncode")}
        columns.append([f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in ops[:count]]
                       + [f"lean encoders: forward {100 * encoders['_LeanEncode']:.0f}%, backward with recompute "
                          f"{100 * encoders['_LeanEncodeBackward']:.0f}%"])
    rows = ["| rank | contiguous | channels_last |", "|---|---|---|"]
    rows += [f"| {i + 1 if i < count else 'all'} | {a} | {b} |"
             for i, (a, b) in enumerate(zip(*columns, strict=True))]
    return ("Profiler, one ResNet-32 K=16 R1E local step, lean encoders (share of self CPU time; last row: the "
            "encoders' whole time, their operators included):\n\n" + "\n".join(rows))


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
    """Run the chosen parts and write each to its region of docs/benchmarks.md (and a plot next to it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128, help="batch of the K sweep and the balanced cuts (3x32x32)")
    p.add_argument("--speed-batch", type=int, default=128, help="batch of the step-time comparison (1x28x28)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--channels-last", action="store_true", help="channels_last in the K sweep too")
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--parts", default="sweep,speed,balance", help="comma-separated: sweep, speed, balance")
    p.add_argument("--ks", default=",".join(map(str, KS)), help="K of the sweep (1 and 16 always needed)")
    args = p.parse_args()
    args.ks = sorted({1, 16, *(int(k) for k in args.ks.split(","))})
    torch.set_num_threads(args.threads)
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    settings = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                        if k in ("batch", "speed_batch", "threads", "warmup", "steps", "device"))
    settings += f" --ks {','.join(map(str, args.ks))}" if tuple(args.ks) != KS else ""
    settings += " --channels-last" if args.channels_last else ""

    def write(region: str, title: str, part: str, body: Callable[[], str]) -> None:
        start, load0 = time.perf_counter(), os.getloadavg()[0]
        text = body()
        write_region(doc, region, (
            f"{title}\n\nMachine: {info['processor']}, {info['cpu_count']} CPUs, {args.threads} torch threads, "
            f"GPU: {info['cuda'] or 'none'}, torch {info['torch']}, device {args.device}. Load average at start "
            f"{load0:.1f}, at end {os.getloadavg()[0]:.1f} (timings are noisy when it is above the core count; "
            f"memory is not). This part: {time.perf_counter() - start:.0f} s.\n\nCommand: "
            f"`PYTHONPATH=src python benchmarks/profile_resnets.py --parts {part} {settings}`\n\n{text}"))
        log(f"wrote {doc} ({region})")

    parts = args.parts.split(",")
    if "sweep" in parts:
        def body() -> str:
            rows, text = sweep(args)
            plot(rows, doc.parent / "profile_resnets.png",
                 title=f"batch {args.batch}, 3x32x32, {args.threads} threads")
            (doc.parent / "profile_resnets.json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
            return ("`peak MiB`: peak tensor memory allocated during one training step (zero_grad, local step, "
                    "SGD step) above what was allocated when it started, measured "
                    f"({rows[0].peak_method}). `saved MiB`: most bytes saved for backward alive at once "
                    "(saved-tensor hooks; the cross-check). `state MiB`: parameters, buffers and optimizer "
                    "state, held between steps. FLOPs from `torch.utils.flop_counter` (convs and matmuls, "
                    "forward and backward). Context encoders are lean (the default: each keeps only its input "
                    "and recomputes in backward, same function) unless marked straightforward.\n\n" + text
                    + "\n\n![memory and step time against K](profile_resnets.png)\n\n"
                    "Rows: `docs/profile_resnets.json`.")
        write("profile", f"## Memory and speed (`contsup profile`)\n\n### Memory and step time over K "
              f"(batch {args.batch}, 3x32x32)", "sweep", body)
    if "speed" in parts:
        write("profile-speed", f"### Step time, ResNet-32 at K = 16 against E2E (batch {args.speed_batch}, "
              "1x28x28)", "speed", lambda: speed(args))
    if "balance" in parts:
        write("profile-balance", "### Memory-balanced cuts: the rule against the paper's tables (CIFAR-10, R0)",
              "balance", lambda: "The rule (`--cuts balanced`) minimises the largest module's memory under the "
              "model of `contsup.method.cuts.balance` (saved-for-backward bytes of units, head and encoders, and the "
              f"sources the encoders hold). Measured peaks at batch {args.batch}, 3x32x32.\n\n" + balance(args))


if __name__ == "__main__":
    main()
