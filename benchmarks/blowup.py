"""Why do the last modules blow up early in R1 / R1E? Log every step's norms and losses of a short run.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/blowup.py --context R1E --out runs/blowup/r1e.jsonl

Per step: each module's loss and, at every cut k, the RMS of module k's output h_k, of each context
encoder's output and of the supplied h_k^c (RMS = sqrt(mean of squares) over the batch, so cuts of
different shapes compare). Defaults: ResNet-32, K = 16, Fashion-MNIST (10k-image subset), batch 128,
lr 0.1. The remedies under test are flags (`--local-init`, `--context-scale`, `--context-lr-scale`,
`--schedule`, `--warmup-steps`). Prints a short summary; the per-step rows go to `--out` (JSONL).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contsup.config import LocalConfig
from contsup.method.local_step import clip_module_grads, local_step
from contsup.run import DataConfig, RunConfig, build_network, load_data, make_loaders
from contsup.train.schedule import make_schedule
from contsup.train.trainer import TrainConfig, evaluate, make_optimizer


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor."""
    return float(t.detach().float().pow(2).mean().sqrt())


def attach_probes(net: nn.Module, row: dict[str, Any]) -> None:
    """Forward hooks that write each cut's h, encoder outputs and h^c norms into `row` (training passes only)."""
    for k, ctx in enumerate(net.context):  # type: ignore[attr-defined]
        def cut_hook(mod: nn.Module, args: tuple, out: torch.Tensor, k: int = k) -> None:
            if mod.training:
                row.setdefault("h", {})[k + 1] = rms(args[0])
                row.setdefault("hc", {})[k + 1] = rms(out)
        ctx.register_forward_hook(cut_hook)
        encoders = [(f"r{j}", enc) for j, enc in zip(ctx.source_ids, ctx.residual, strict=True)]
        encoders += [("img", ctx.image)] if ctx.image is not None else []
        for name, enc in encoders:
            def enc_hook(mod: nn.Module, args: tuple, out: torch.Tensor, k: int = k, name: str = name) -> None:
                if mod.training:
                    row.setdefault("enc", {}).setdefault(k + 1, {})[name] = rms(out)
            enc.register_forward_hook(enc_hook)


def main() -> None:
    """Train a short run step by step and log norms and losses."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", default="R1E")
    p.add_argument("--modules", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedule", default="epoch", help="step | epoch (default: the paper's per-epoch rate)")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: the schedule's default")
    p.add_argument("--local-init", default="torch", help="torch | kaiming (heads and encoders)")
    p.add_argument("--context-scale", type=float, default=1.0, help="initial weight of each encoder's last BN")
    p.add_argument("--context-lr-scale", type=float, default=1.0, help="the encoders' rate relative to the rest")
    p.add_argument("--clip-grad", type=float, default=0.0, help="clip each module's gradient norm (0: off)")
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: the whole run)")
    p.add_argument("--val-split", type=int, default=0,
                   help="hold out this many training images and print the final validation error (0: none)")
    p.add_argument("--out", default=None, help="JSONL file for the per-step rows (written as they come)")
    a = p.parse_args()

    local = LocalConfig(modules=a.modules, context=a.context, cut_table="equal", local_init=a.local_init,
                        context_scale=a.context_scale)
    train = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, schedule=a.schedule,
                        warmup_steps=a.warmup_steps, seed=a.seed, device="cpu", progress=False,
                        context_lr_scale=a.context_lr_scale, clip_grad=a.clip_grad)
    cfg = RunConfig(DataConfig("fashion-mnist", val_split=a.val_split, train_subset=a.train_subset), "resnet32",
                    local, train)
    data = load_data(cfg)
    net = build_network(cfg, data.info.channels, data.info.num_classes, data.info.size)
    loaders = make_loaders(cfg, data, torch.device("cpu"))
    loader = loaders.train
    opt = make_optimizer(net.parameters(), train, net.context.parameters())
    sched = make_schedule(train.schedule, train.lr, train.epochs, len(loader), None, train.warmup_steps)
    row: dict[str, Any] = {}
    attach_probes(net, row)
    rows = []
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    log = open(a.out, "w") if a.out else None  # noqa: SIM115 (closed below)
    step, start = 0, time.perf_counter()
    net.train()
    for epoch in range(a.epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(a.seed * 1000 + epoch)
        for i, (x, y) in enumerate(loader):
            row.clear()
            lr = sched.apply(opt, epoch, i)
            opt.zero_grad(set_to_none=True)
            out = local_step(net, x, y)
            norms = [float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.module_parameters(k)
                                                                  if p.grad is not None])))
                     for k in range(net.num_modules)]
            if a.clip_grad:
                clip_module_grads(net, range(net.num_modules), a.clip_grad)
            opt.step()
            rows.append({"step": step, "lr": lr, "loss": out.losses.tolist(), "grad": norms,
                         **json.loads(json.dumps(row))})
            if log:
                log.write(json.dumps(rows[-1]) + "\n")
                log.flush()
            if step % 20 == 0:
                print(f"step {step} loss last {rows[-1]['loss'][-1]:.2f} max {max(rows[-1]['loss']):.2f} "
                      f"grad last {norms[-1]:.2f} max {max(norms):.2f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            step += 1
            if a.steps and step >= a.steps:
                break
        if a.steps and step >= a.steps:
            break
    if log:
        log.close()
    summarize(rows, a, time.perf_counter() - start)
    if loaders.val is not None:
        print(f"final validation error {evaluate(net, loaders.val)['error']:.2f}% "
              f"({len(data.val)} held-out training images)")


def summarize(rows: list[dict[str, Any]], a: argparse.Namespace, seconds: float) -> None:
    """Peak loss per module (and when), and the norms at the last cuts at a few steps."""
    k = len(rows[0]["loss"])
    print(f"{a.context} K={a.modules} seed {a.seed} schedule {a.schedule} warmup_steps {a.warmup_steps} "
          f"local_init {a.local_init} context_scale {a.context_scale} context_lr_scale {a.context_lr_scale} "
          f"clip_grad {a.clip_grad}: "
          f"{len(rows)} steps in {seconds:.0f} s (load average {os.getloadavg()[0]:.1f})")
    peaks = [max(range(len(rows)), key=lambda s, m=m: rows[s]["loss"][m]) for m in range(k)]
    print("peak loss per module (step): " + "  ".join(
        f"{m + 1}:{rows[s]['loss'][m]:.1f}({s})" for m, s in enumerate(peaks)))
    for s in sorted({0, 5, 10, 20, 40, 80, len(rows) - 1} & set(range(len(rows)))):
        r = rows[s]
        cuts = [c for c in (1, k // 2, k - 2, k - 1) if str(c) in r.get("h", {})]
        text = "  ".join(
            f"cut{c}: h {r['h'][str(c)]:.2f} hc {r['hc'][str(c)]:.2f} enc "
            + ",".join(f"{n}={v:.2f}" for n, v in r.get("enc", {}).get(str(c), {}).items()) for c in cuts)
        print(f"step {s:3d} lr {r['lr']:.3f} loss last {r['loss'][-1]:.2f} max {max(r['loss']):.2f} | {text}")


if __name__ == "__main__":
    main()
