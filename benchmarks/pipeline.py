"""Throughput of a pipeline of P ranks x 1 thread against one process with P threads, same cores.

ResNet-32 cut into K=16 modules on Fashion-MNIST (1x28x28), batch 128, contexts R1E and R0. Both sides
time the training phase of one epoch over the same `--steps` batches (after a warm-up epoch), through
the library's one loop, `Trainer.train_epoch`: with the local step in one process, with the pipeline
step on every rank (started with torchrun, gloo on CPU). Writes the table between the `pipeline`
markers of docs/benchmarks.md (nothing else in that file is touched).

    PYTHONPATH=src python benchmarks/pipeline.py            # full table (a few minutes on 2 cores)
    PYTHONPATH=src python benchmarks/pipeline.py --steps 4  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from contsup.config import DataConfig, LocalConfig, PipelineConfig, RunConfig, TrainConfig
from contsup.run import build_network, load_data, make_trainer
from docregion import write_region

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def run_config(context: str, steps: int, batch: int) -> RunConfig:
    """ResNet-32, K=16, the given context, `steps` batches of Fashion-MNIST per epoch, 2 epochs."""
    return RunConfig(
        DataConfig("fashion-mnist", download=False, train_subset=steps * batch), "resnet32",
        LocalConfig(modules=16, context=context), TrainConfig(epochs=2, batch_size=batch, lr=0.1, device="cpu",
                                                              progress=False), PipelineConfig(backend="gloo"),
    )


def single(cfg: RunConfig) -> dict:
    """One process (threads as set by OMP_NUM_THREADS): images/s of the second epoch."""
    data = load_data(cfg)
    trainer = make_trainer(cfg, data, build_network(cfg, data.info.channels, data.info.num_classes, data.info.size))
    trainer.train_epoch()
    trainer.epoch += 1
    return {"images_per_s": trainer.train_epoch()["images_per_s"], "threads": torch.get_num_threads()}


def pipeline_rank(cfg: RunConfig) -> dict | None:
    """One rank of the pipeline (under torchrun): images/s of the second epoch, on rank 0."""
    import torch.distributed as dist

    from contsup.distributed.launch import build_rank
    trainer, step = build_rank(cfg)
    trainer.train_epoch()
    trainer.epoch += 1
    row = trainer.train_epoch()
    sizes = torch.tensor([len(step.modules)], dtype=torch.int64)
    gathered = [torch.zeros_like(sizes) for _ in range(step.topo.world)]
    dist.all_gather(gathered, sizes, group=step.groups.ctrl)
    dist.destroy_process_group()
    return {"images_per_s": row["images_per_s"], "stage_sizes": [int(s) for s in gathered],
            "threads": torch.get_num_threads()}


def launch(args: argparse.Namespace, role: str, context: str, threads: int, ranks: int = 1) -> dict:
    """Run one measurement in fresh processes; returns its result and the load average around it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        me = [__file__, "--role", role, "--context", context, "--steps", str(args.steps),
              "--batch", str(args.batch), "--result", str(out)]
        cmd = [sys.executable, *me] if role == "single" else \
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
             "--master-addr", "127.0.0.1", "--master-port", str(args.port), *me]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        before = os.getloadavg()[0]
        subprocess.run(cmd, env=env, check=True)
        result = json.loads(out.read_text())
        result["load"] = (before, os.getloadavg()[0])
        return result


def main() -> None:
    """Measure both sides for every context, print the table and write it into the docs."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["bench", "single", "pipeline"], default="bench")
    p.add_argument("--contexts", default="R1E,R0")
    p.add_argument("--context", default="R1E")
    p.add_argument("--ranks", type=int, default=2, help="pipeline ranks P (the single process gets P threads)")
    p.add_argument("--steps", type=int, default=12, help="batches per timed epoch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--port", type=int, default=29517)
    p.add_argument("--result", default=None)
    p.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    if args.role != "bench":
        cfg = run_config(args.context, args.steps, args.batch)
        result = single(cfg) if args.role == "single" else pipeline_rank(cfg)
        if result is not None and os.environ.get("RANK", "0") == "0":
            Path(args.result).write_text(json.dumps(result))
        return
    rows = []
    for context in args.contexts.split(","):
        one = launch(args, "single", context, threads=args.ranks)
        pipe = launch(args, "pipeline", context, threads=1, ranks=args.ranks)
        thread = launch(args, "single", context, threads=1)
        speedup = pipe["images_per_s"] / one["images_per_s"]
        loads = " / ".join(f"{r['load'][0]:.1f}-{r['load'][1]:.1f}" for r in (one, pipe, thread))
        rows.append(
            f"| {context} | {one['images_per_s']:.1f} | {pipe['images_per_s']:.1f} | {speedup:.2f} | "
            f"{speedup / args.ranks:.2f} | {thread['images_per_s']:.1f} | "
            f"{','.join(map(str, pipe['stage_sizes']))} | {loads} |"
        )
        print(rows[-1], flush=True)
    cmd = "PYTHONPATH=src python benchmarks/pipeline.py" + (f" --steps {args.steps}" if args.steps != 12 else "")
    text = "\n".join([
        f"## Pipeline: {args.ranks} ranks x 1 thread against 1 process x {args.ranks} threads",
        "",
        f"ResNet-32, K=16 modules, Fashion-MNIST (1x28x28), batch {args.batch}, {args.steps} batches timed after a "
        "warm-up epoch; training phase only. Pipeline: torchrun, gloo on CPU, modules per stage balanced by "
        "measured step time. Target: speed-up >= 0.75 x P.",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU, torch {torch.__version__}. "
        "Load: 1-minute load average before-after each measurement (P threads / pipeline / 1 thread); other "
        "jobs shared the machine when it is above ~0.5. The 1-process x 1-thread column tells how much the "
        "second thread helps the single process; on a loaded machine two OpenMP threads of one process wait on "
        "each other whenever a core is taken, so the speed-up against P threads then overstates the pipeline's "
        "gain and the 1-thread column is the steadier reference.",
        "",
        f"| context | 1 process x {args.ranks} threads (img/s) | {args.ranks} ranks x 1 thread (img/s) | speed-up "
        "| speed-up / P | 1 process x 1 thread (img/s) | modules per stage | load |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(text)
    if not args.no_doc:
        write_region(DOC, "pipeline", text)


if __name__ == "__main__":
    main()
