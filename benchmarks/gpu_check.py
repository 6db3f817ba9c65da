"""One command for the day a GPU is lent: every CUDA path of contsup, with its numbers, in minutes.

    make gpu-check                      # = python benchmarks/gpu_check.py --out runs/gpu-check

On a machine with CUDA it runs, on the current GPU (docs/benchmarks.md, "The GPU check"):
  tests     the tests marked `cuda` (tests/gpu/test_on_gpu.py), for real;
  epoch     one epoch of ResNet-32, K = 16, R1E on 50,000 synthetic CIFAR-shaped images, bf16 and channels_last;
  memory    `contsup profile` of ResNet-110 at batch 1024: E2E and K = 16 R0 / R1E on balanced cuts, plain and
            with each module's units checkpointed (the paper's memory table), channels_last;
  peaks     the CUDA allocator's step peak against the CPU allocator's on the same rows (ResNet-32, batch 128);
  heads     a few bf16 steps of every head kind and wrapper (AugLocal, MAN, PFF) and of a ViT with its token heads;
  pipeline  a 2-rank NCCL pipeline (torchrun), when the machine has two GPUs.
Each check's outcome (passed / failed / skipped, with why) and numbers go to summary.json and summary.md in --out.
On a machine without CUDA the same checks run at toy sizes on the CPU (tests/gpu/test_gpu_check.py runs that
path in CI, in float32), so the script cannot rot while no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contsup.config import LocalConfig, TrainConfig
from contsup.data import SyntheticOptions, load_dataset
from contsup.data.loader import DeviceLoader
from contsup.device import resolve_device
from contsup.method import LocalNetwork
from contsup.models import build_arch
from contsup.profile.runner import ProfileConfig, machine, run_profile
from contsup.tables import markdown_table
from contsup.train.optim import make_optimizer
from contsup.train.steps import LocalStep
from contsup.train.trainer import Loaders, Trainer

MIB = 2**20
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sizes:
    """What each check runs: the GPU's sizes, or toy sizes for the CPU path."""

    device: str
    image_size: int  # of the synthetic CIFAR-shaped images (3 x size x size)
    train_images: int
    epoch_arch: str
    epoch_batch: int
    memory_arch: str
    memory_batch: int
    memory_input: tuple[int, int, int]
    peak_batch: int
    head_steps: int
    bf16: bool  # on the CPU path float32: the CPU's bfloat16 convolutions are slower by orders of magnitude


    timed_steps: int  # of each profile row


GPU = Sizes("cuda", 32, 50_000, "resnet32", 128, "resnet110", 1024, (3, 32, 32), 128, 5, True, 3)
CPU = Sizes("cpu", 16, 64, "resnet32", 32, "resnet32", 4, (3, 16, 16), 8, 1, False, 1)


def run_tests(sizes: Sizes, out: Path) -> dict[str, Any]:
    """The `cuda`-marked tests (skipped without a GPU: the CPU path checks only that they collect)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "tests/gpu", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    (out / "tests.log").write_text(proc.stdout + proc.stderr)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode not in (0, 5):  # 5: no test collected
        raise RuntimeError(f"pytest -m cuda: {last}")
    return {"pytest": last}


def epoch(sizes: Sizes, out: Path) -> dict[str, Any]:
    """One epoch of K = 16 R1E in bf16 and channels_last on synthetic CIFAR-shaped images, then the test set."""
    opts = SyntheticOptions(size=sizes.image_size, train=sizes.train_images, test=sizes.train_images // 5)
    data = load_dataset("synthetic", synthetic=opts)
    device = resolve_device(sizes.device)
    train = DeviceLoader(data.train, data.info, sizes.epoch_batch, device, train=True)
    test = DeviceLoader(data.test, data.info, 1024, device)
    net = LocalNetwork(build_arch(sizes.epoch_arch, 3, 10, sizes.image_size), LocalConfig(modules=16, context="R1E"),
                       torch.zeros(1, 3, sizes.image_size, sizes.image_size))
    cfg = TrainConfig(epochs=1, batch_size=sizes.epoch_batch, lr=0.1, progress=False, device=sizes.device,
                      bf16=sizes.bf16, channels_last=True)
    s = Trainer(LocalStep.of(net, cfg), Loaders(train, test), cfg, fresh(out / "epoch")).fit()
    assert s is not None and s["final_test_error"] is not None
    return {"arch": sizes.epoch_arch, "images": sizes.train_images, "device": s["device"], "bf16": sizes.bf16,
            "images_per_s": round(s["images_per_s"], 1), "test_error": round(s["final_test_error"], 2),
            "step_peak_mib": round(s["step_peak_memory_bytes"] / MIB, 1),
            "process_peak_mib": round(s["peak_memory_bytes"] / MIB, 1), "peak_kind": s["peak_memory_kind"]}


def memory(sizes: Sizes, out: Path) -> dict[str, Any]:
    """The paper's memory table: E2E and K = 16 R0 / R1E, plain and with units checkpointed, against the bound."""
    cfg = ProfileConfig(arch=sizes.memory_arch, modules=(1, 16), contexts=("R0", "R1E"), batch_size=sizes.memory_batch,
                        input_shape=sizes.memory_input, cut_table="balanced", device=sizes.device, channels_last=True,
                        warmup=1, steps=sizes.timed_steps, flops=False, checkpoint_segments=(0, 8))
    rows = run_profile(cfg)
    table = [{"K": r.modules, "context": r.context, "peak_mib": round(r.peak_bytes / MIB, 1),
              "x_bound": round((r.peak_bytes + r.state_bytes) / r.bound_bytes, 2), "step_ms": round(r.step_ms, 1),
              "kind": r.peak_method} for r in rows]
    e2e = next(r for r in rows if r.modules == 1 and "ckpt" not in r.context)
    best = min(rows, key=lambda r: r.peak_bytes)
    return {"arch": sizes.memory_arch, "batch": sizes.memory_batch, "rows": table,
            "best_saving_x": round(e2e.peak_bytes / best.peak_bytes, 2), "best": best.context}


def peaks(sizes: Sizes, out: Path) -> dict[str, Any]:
    """The same profile rows measured by the CUDA allocator and by the CPU allocator's events."""
    if sizes.device == "cpu":
        raise Skipped("no GPU: the CPU allocator has nothing to be compared with")
    rows = {}
    for device in ("cpu", sizes.device):
        cfg = ProfileConfig(arch="resnet32", modules=(1, 16), contexts=("R0", "R1E"), batch_size=sizes.peak_batch,
                            device=device, warmup=1, steps=1, flops=False)
        rows[device] = {(r.modules, r.context): r.peak_bytes for r in run_profile(cfg)}
    return {"rows": [{"K": k, "context": c, "cpu_mib": round(rows["cpu"][(k, c)] / MIB, 1),
                      "cuda_mib": round(rows[sizes.device][(k, c)] / MIB, 1),
                      "cuda_over_cpu": round(rows[sizes.device][(k, c)] / rows["cpu"][(k, c)], 3)}
                     for k, c in rows["cpu"]]}


HEAD_SETTINGS = {
    "1c2f": {}, "2c2f": {"head": "2c2f"}, "0c1f": {"head": "0c1f"}, "auglocal": {"head": "auglocal"},
    "auglocal-depth1": {"head": "auglocal", "aux_depth": 1}, "MAN": {"man_momentum": 0.995},
    "PFF": {"head_patches": 2}, "recon": {"recon": "5,1,0,1"},
}
TOKEN_HEADS = ("clstoken", "meantoken", "blocktoken")


def heads(sizes: Sizes, out: Path) -> dict[str, Any]:
    """A few bf16 local steps of every head kind and wrapper (ResNet-20) and of a ViT with each token head."""
    device = resolve_device(sizes.device)
    cases: list[tuple[str, str, dict[str, Any], tuple[int, int, int]]] = [
        (name, "resnet20", {"context": "R1E", **s}, (3, sizes.image_size, sizes.image_size))
        for name, s in HEAD_SETTINGS.items()]
    cases += [(f"vit {h}", "vit-mini-p7", {"context": "R1E", "head": h}, (1, 28, 28)) for h in TOKEN_HEADS]
    result = {}
    for name, arch, settings, shape in cases:
        net = LocalNetwork(build_arch(arch, shape[0], 10, shape[1]), LocalConfig(modules=4, **settings),
                           torch.zeros(1, *shape))
        step = LocalStep(net, device, bf16=sizes.bf16, channels_last=arch.startswith("resnet"),
                         pixels=(lambda x: x.sigmoid()) if net.needs_pixels else None)
        opt = make_optimizer(step.named_parameters(), TrainConfig(lr=0.05))
        batch = (torch.randn(32, *shape), torch.randint(0, 10, (32,)))
        for _ in range(sizes.head_steps):
            opt.zero_grad(set_to_none=True)
            losses, _, _ = step.train(batch)
            opt.step()
        final = losses.float().cpu()  # host sync, once per case
        if not torch.isfinite(final).all():
            raise RuntimeError(f"{name}: a local loss is not finite ({final.tolist()})")
        result[name] = round(float(final[-1]), 3)
    return {"last_loss": result}


def pipeline(sizes: Sizes, out: Path) -> dict[str, Any]:
    """Two ranks of the local pipeline over NCCL (torchrun), one GPU each."""
    if sizes.device == "cpu" or torch.cuda.device_count() < 2:
        raise Skipped(f"needs two GPUs ({torch.cuda.device_count()} here)")
    run = fresh(out / "pipeline")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "contsup", "train",
           "--pipeline", "--data", "synthetic", "--arch", "resnet32", "--modules", "16", "--context", "R1E",
           "--epochs", "2", "--batch-size", "128", "--lr", "0.1", "--device", "cuda", "--backend", "nccl",
           "--bf16", "--channels-last", "--no-progress", "--out", str(run)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420)
    (out / "pipeline.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    s = json.loads((run / "summary.json").read_text())
    return {"images_per_s": round(s["images_per_s"], 1), "test_error": s["final_test_error"],
            "peak_mib": round(s["peak_memory_bytes"] / MIB, 1)}


def fresh(folder: Path) -> Path:
    """A check's own run folder, emptied: each `make gpu-check` measures anew (the script owns --out)."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


class Skipped(Exception):
    """A check that does not apply on this machine (the reason is recorded)."""


CHECKS: dict[str, Callable[[Sizes, Path], dict[str, Any]]] = {
    "tests": run_tests, "epoch": epoch, "memory": memory, "peaks": peaks, "heads": heads, "pipeline": pipeline}


def write_summary(out: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    """summary.json (everything) and summary.md (one line per check, then each check's numbers)."""
    (out / "summary.json").write_text(json.dumps({"machine": meta, "checks": results}, indent=2) + "\n")
    rows = [[name, r["outcome"], f"{r['seconds']:.1f}", r.get("why", "")] for name, r in results.items()]
    lines = [f"# contsup GPU check ({meta['device']})", "", f"machine: {json.dumps(meta)}", "",
             markdown_table(["check", "outcome", "seconds", "note"], rows), ""]
    for name, r in results.items():
        if r.get("numbers"):
            lines += [f"## {name}", "", "```json", json.dumps(r["numbers"], indent=1), "```", ""]
    (out / "summary.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run the checks (all, or --only some) and write the summary; exit 1 when any check failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu-check", help="folder for summary.json, summary.md and the logs")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated checks among {', '.join(CHECKS)}")
    p.add_argument("--cpu", action="store_true", help="the CPU path (toy sizes) even where CUDA is available")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        p.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    sizes = GPU if torch.cuda.is_available() and not args.cpu else CPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**machine(), "device": str(resolve_device(sizes.device))}
    results: dict[str, Any] = {}
    for name in names:
        start = time.perf_counter()
        try:
            results[name] = {"outcome": "passed", "numbers": CHECKS[name](sizes, out)}
        except Skipped as why:
            results[name] = {"outcome": "skipped", "why": str(why)}
        except Exception as err:  # noqa: BLE001 - a failed check is recorded, the others still run
            (out / f"{name}.error.txt").write_text(traceback.format_exc())
            results[name] = {"outcome": "failed", "why": f"{type(err).__name__}: {str(err)[:300]}"}
        results[name]["seconds"] = time.perf_counter() - start
        print(f"{name:9s} {results[name]['outcome']:8s} {results[name]['seconds']:6.1f} s  "
              f"{results[name].get('why', '')}", flush=True)
        write_summary(out, results, meta)  # after every check: a check that hangs leaves the others' numbers
    print(f"summary: {out / 'summary.md'}")
    return 1 if any(r["outcome"] == "failed" for r in results.values()) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
