"""`contsup train` and `contsup eval`."""

from __future__ import annotations

import argparse
import json
import os

from contsup.data import dataset_info
from contsup.distributed import PipelineConfig, run_pipeline
from contsup.errors import ContsupError
from contsup.method.context import IMAGE_ENCODERS
from contsup.method.cuts import TABLES, parse_cut_list
from contsup.method.heads import HEADS, LOSSES, parse_recon
from contsup.method.network import LocalConfig
from contsup.run import DataConfig, RunConfig, build_network, evaluate_checkpoint, run_training
from contsup.train.trainer import TrainConfig

EXAMPLES = """examples:
  contsup train --data cifar10 --modules 16 --context R1E --out runs/k16   # the paper's recipe
  contsup train --modules 1 --epochs 2 --train-subset 10000 --batch-size 128 --lr 0.1 --out runs/e2e
                                                                    # a short end-to-end run on a CPU
  contsup train --modules 16 --context R0 --head 0c1f --dry-run     # build plain greedy learning, print it
  contsup train --data cifar10 --modules 16 --context R1E --out runs/k16 --resume   # continue it
  contsup runs runs/k16 runs/e2e --out runs/report                  # compare runs: table and plots

The progress bar shows last = the last module's loss and local = the local heads' mean loss on the
current batch; the line after each epoch gives their means over the last quarter of the epoch."""


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Flags that choose the dataset."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist", help="dataset name (see `contsup data list`)")
    g.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    g.add_argument("--no-download", action="store_true", help="never download; fail if the data is missing")
    g.add_argument("--val-split", type=int, default=0, help="training images held out for validation (0: none)")
    g.add_argument("--train-subset", type=int, default=0, help="train on this many images only (0: all)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Flags that build the network and its local learning."""
    g = p.add_argument_group("network and local learning")
    g.add_argument("--arch", default="resnet32", help="resnetN, N = 6n+2 (resnet20/32/56/110 ...)")
    g.add_argument("--modules", "-K", type=int, default=4, help="number of gradient-isolated modules K (1: E2E)")
    g.add_argument("--cuts", default="auto",
                   help=f"a cut table ({', '.join(TABLES)}) or an explicit list: unit indices '3,7,11' "
                        "or stage.block pairs '1.2,2.1,3.0'")
    g.add_argument("--context", default="R1E", help="R0 (plain greedy), E, Rn or RnE")
    g.add_argument("--head", default="1c2f", choices=HEADS, help="local head shape")
    g.add_argument("--loss", default="softmax", choices=LOSSES, help="local loss")
    g.add_argument("--width", type=int, default=128, help="hidden width of the local heads")
    g.add_argument("--widen", type=float, default=1.0, help="multiplies the heads' widths")
    g.add_argument("--image-encoder", default="paper", choices=IMAGE_ENCODERS,
                   help="paper: the image encoder runs at the image's resolution, then pools (default); "
                        "pooled: pool the image to the cut's size first (cheaper; not the paper's function)")
    g.add_argument("--no-lean-context", dest="lean_context", action="store_false",
                   help="keep every context-encoder intermediate for backward (default: lean, each encoder keeps "
                        "only its input and recomputes in backward; same function and gradients)")
    g.add_argument("--recon", default="none",
                   help="InfoPro reconstruction term: none, paper (the paper's weights for this net/data/K), "
                        "or ixx1,ixy1,ixx2,ixy2")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Flags of the optimisation recipe."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=160, help="training epochs (the paper's recipe)")
    g.add_argument("--batch-size", type=int, default=1024, help="images per step (the paper's recipe)")
    g.add_argument("--lr", type=float, default=0.8,
                   help="peak learning rate of SGD (the paper's, for batch 1024; scale it with the batch size)")
    g.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="L2 weight decay")
    g.add_argument("--warmup-epochs", type=int, default=None, help="default: 10 per 160 epochs")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights, the data order and augmentation")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars (their fields: last = the last module's loss, "
                        "local = mean loss of the local heads, on the current batch)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also log each module's loss, the errors and the learning rate to <out>/tensorboard "
                        "(pip install 'contsup[tensorboard]')")
    g.add_argument("--out", default=None, help="run folder (default: runs/<data>-<arch>-K<K>-<context>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--dry-run", action="store_true", help="build everything, print the summary, exit")


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    """Flags of a pipelined run under torchrun (one rank per stage of modules)."""
    g = p.add_argument_group("pipeline (torchrun --nproc-per-node N -m contsup train ... --pipeline)")
    g.add_argument("--pipeline", action="store_true", help="run as a pipeline rank (implied by WORLD_SIZE > 1)")
    g.add_argument("--replicas", type=int, default=1, help="data-parallel copies R of the pipeline (P = ranks / R)")
    g.add_argument("--stage-sizes", default=None, help="modules per stage, e.g. 3,5,8 (default: balanced by cost)")
    g.add_argument("--inflight", type=int, default=2, help="micro-batches a stage may send ahead of its successor")
    g.add_argument("--dist-timeout", type=float, default=300.0, help="seconds before a silent peer counts as failed")
    g.add_argument("--backend", default="auto", help="auto (nccl with CUDA, else gloo), gloo or nccl")


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """A PipelineConfig from parsed `train` flags."""
    sizes = None
    if args.stage_sizes:
        try:
            sizes = [int(v) for v in args.stage_sizes.split(",")]
        except ValueError:
            raise ContsupError(f"cannot read --stage-sizes {args.stage_sizes!r}: use counts like 3,5,8") from None
    if args.inflight < 1 or args.dist_timeout <= 0:
        raise ContsupError("--inflight and --dist-timeout must be positive")
    return PipelineConfig(args.replicas, sizes, args.inflight, args.dist_timeout, args.backend)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A RunConfig from parsed `train` flags (validated later, when the network is built)."""
    table, cuts = args.cuts, None
    if args.cuts not in TABLES:
        table, cuts = "auto", parse_cut_list(args.cuts)
    balanced = table.startswith("balanced")
    local = LocalConfig(
        modules=args.modules, context=args.context, head=args.head, loss=args.loss, width=args.width,
        widen=args.widen, cut_table=table, cuts=cuts,
        recon=parse_recon(args.recon, args.arch.lower(), args.data, args.modules, balanced),
        image_encoder=args.image_encoder, lean_context=args.lean_context,
    )
    train = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, seed=args.seed, device=args.device,
        bf16=args.bf16, channels_last=args.channels_last, progress=not args.no_progress,
        tensorboard=args.tensorboard,
    )
    data = DataConfig(args.data, args.data_dir, not args.no_download, args.val_split, args.train_subset)
    out = args.out or f"runs/{args.data}-{args.arch.lower()}-K{args.modules}-{args.context}"
    return RunConfig(data, args.arch.lower(), local, train, out)


def format_summary(summary: dict) -> str:
    """The closing lines of a training run."""
    p = summary["params"]
    return "\n".join([
        f"final test error: {summary['final_test_error']:.2f}%   "
        f"(best epoch {summary['best_epoch']}: {summary['best_test_error_selected_on_test']:.2f}%, "
        "selected on the test set, for comparison only)",
        f"training time: {summary['train_time_s']:.1f} s   {summary['images_per_s']:.0f} images/s   "
        f"device {summary['device']}",
        *([f"step peak memory: {summary['step_peak_memory_bytes'] / 2**20:.1f} MiB (one training step at the run's "
            f"batch size, {summary['step_peak_memory_kind']})"] if "step_peak_memory_bytes" in summary else []),
        f"process peak memory: {summary['peak_memory_bytes'] / 2**20:.0f} MiB ({summary['peak_memory_kind']}: "
        "runtime and dataset included)",
        "parameters: " + ", ".join(f"{k} {v:,}" for k, v in p.items()),
    ])


def cmd_train(args: argparse.Namespace) -> int:
    """Train a network with local learning (or print its summary with --dry-run)."""
    cfg = config_from_args(args)
    if args.dry_run:
        info = dataset_info(cfg.data.name)
        net = build_network(cfg, info.channels, info.num_classes, info.size)
        print(net.describe())
        print(json.dumps(net.param_counts()))
        return 0
    if args.pipeline or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        summary = run_pipeline(cfg, pipeline_config(args), resume=args.resume)
        if summary is None:  # not rank 0
            return 0
    else:
        summary = run_training(cfg, resume=args.resume)
    print(format_summary(summary))
    print(f"run folder: {cfg.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on its dataset's test split."""
    result = evaluate_checkpoint(args.checkpoint, args.device, args.batch_size, args.data_dir)
    print(f"{result['arch']} K={result['modules']} {result['context']} on {result['dataset']}, "
          f"epoch {result['epoch']}: test error {result['test_error']:.2f}%  loss {result['test_loss']:.4f}")
    print(json.dumps(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train` and `eval` to the command line."""
    p = sub.add_parser("train", help="train a network with greedy local learning and Context Supply",
                       description="Train a network cut into K gradient-isolated modules (K = 1: end-to-end). "
                                   "Defaults are the paper's CIFAR-10 recipe (160 epochs, batch 1024, lr 0.8).",
                       epilog=EXAMPLES)
    add_data_args(p)
    add_model_args(p)
    add_train_args(p)
    add_pipeline_args(p)
    p.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="test error of a saved checkpoint")
    e.add_argument("checkpoint", help="checkpoint.pt or its run folder")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--batch-size", type=int, default=1024, help="images per forward pass")
    e.add_argument("--data-dir", default=None,
                   help="directory holding the checkpoint's dataset (default: the usual places; never downloaded)")
    e.set_defaults(func=cmd_eval)
