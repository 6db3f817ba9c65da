"""`contsup profile`: measured memory, step time and FLOPs of training steps over K and context modes."""

from __future__ import annotations

import argparse
import os

import torch

from contsup.checks import MAX_SEED, check_int
from contsup.cli.train import add_settings
from contsup.config import head_settings, settings
from contsup.distributed.costmodel import calibrate, format_predictions
from contsup.errors import ContsupError
from contsup.files import check_out_dir
from contsup.method.context import IMAGE_ENCODERS
from contsup.method.cuts import TABLES
from contsup.method.heads import HEADS
from contsup.method.losses import LOSSES
from contsup.models import BACKBONES
from contsup.profile.runner import (
    ProfileConfig,
    ProfileRow,
    build,
    check_fits,
    format_table,
    machine,
    run_profile,
    write_outputs,
)

MAX_CHANNELS, MAX_SIDE = 64, 4096  # input sizes profile accepts
MAX_STEPS = 10_000  # timed or untimed steps per configuration
# The heads' and head wrappers' settings but the head itself (--head, above): each a flag as in `contsup train`
HEAD_FLAGS = [s.path for s in settings().values() if s.key in head_settings() and s.key != "head"]
# InfoPro's reconstruction term and its variants (MAN's and HPFF's weight rules, HPFF's patched decoders)
RECON_FLAGS = ["local.recon", "local.recon_dataset", "local.recon_schedule", "local.recon_patches"]
LOCAL_KEYS = [settings()[path].key for path in HEAD_FLAGS + RECON_FLAGS]  # as parsed (and named in profile.json)


def int_list(text: str) -> list[int]:
    """Parse "1,2,4"."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ContsupError(f"expected a comma-separated list of integers, got {text!r}") from None


def input_shape(text: str) -> tuple[int, int, int]:
    """Parse "3x32x32" (channels x height x width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise ContsupError(f"--input takes CxHxW, e.g. 3x32x32; got {text!r}") from None
    if not (1 <= c <= MAX_CHANNELS and 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ContsupError(f"--input {text!r}: channels must be 1..{MAX_CHANNELS}, height and width 1..{MAX_SIDE}")
    return c, h, w


def segments_list(text: str) -> list[int | str]:
    """Parse "0,sqrt,8" (checkpoint segments: 0 off, a count, or sqrt)."""
    out: list[int | str] = []
    for t in (t.strip() for t in text.split(",") if t.strip()):
        if t == "sqrt":
            out.append(t)
            continue
        try:
            out.append(int(t))
        except ValueError:
            raise ContsupError(f"--checkpoint-segments takes 0, sqrt or segment counts, got {t!r}") from None
        check_int("checkpoint_segments", out[-1], 0, 10_000)
    return out


def config_from_args(args: argparse.Namespace) -> ProfileConfig:
    """A ProfileConfig from parsed flags."""
    if args.batch_size <= 0 or args.steps <= 0 or args.warmup < 0:
        raise ContsupError("--batch-size and --steps must be positive, --warmup >= 0")
    check_int("--steps", args.steps, 1, MAX_STEPS)
    check_int("--warmup", args.warmup, 0, MAX_STEPS)
    check_int("--threads", args.threads, 0, os.cpu_count() or 1)  # 0: leave torch's; more than the cores: none faster
    check_int("seed", args.seed, 0, MAX_SEED)
    if args.classes < 2:
        raise ContsupError(f"--classes must be >= 2, got {args.classes}")
    modules = int_list(args.modules)
    if args.cuts not in TABLES:  # explicit cuts: checked before anything is built
        local = [k for k in modules if k > 1]
        if len(local) != 1 or len(args.cuts.split(",")) != local[0] - 1:
            raise ContsupError(f"explicit --cuts {args.cuts!r} fit one K > 1 with K - 1 cuts (-K {args.modules}); "
                               f"or name a cut table: {', '.join(TABLES)}")
    return ProfileConfig(
        arch=args.arch if ":" in args.arch else args.arch.lower(),  # the user's package.module:function as typed
        modules=modules, contexts=[c.strip() for c in args.contexts.split(",")],
        batch_size=args.batch_size, input_shape=input_shape(args.input), num_classes=args.classes,
        cut_table=args.cuts if args.cuts in TABLES else "auto", cuts=None if args.cuts in TABLES else args.cuts,
        head=args.head, loss=args.loss, warmup=args.warmup, steps=args.steps,
        device=args.device, channels_last=args.channels_last, seed=args.seed,
        checkpoint_segments=segments_list(args.checkpoint_segments), optimizer=args.optimizer,
        local={"image_encoder": args.image_encoder, "lean_context": args.lean_context,
               "lean_norm": args.lean_norm,
               **{key: getattr(args, key) for key in LOCAL_KEYS if hasattr(args, key)}},
    )


def cmd_parallel_model(cfg: ProfileConfig, args: argparse.Namespace) -> int:
    """Calibrate the cost model of parallel training on this machine and print its predictions per P."""
    stages = int_list(args.stages)
    if not stages or min(stages) < 1 or args.micro_batches < 0:
        raise ContsupError("--stages takes positive counts, e.g. 2,4,8,16; --micro-batches >= 0")
    if cfg.local.get("cascade"):
        raise ContsupError("--parallel-model times isolated modules on stages; HPFF's cascade runs in one process")
    k, context = cfg.modules[-1], cfg.contexts[0]
    device = torch.device("cpu")
    cal = calibrate(build(cfg, k, context, device), build(cfg, 1, "E2E", device), cfg.batch_size, cfg.optimizer,
                    repeats=cfg.steps)
    info = machine()
    print(f"{cfg.arch}, local K={k} {context} head {cfg.head}, batch {cfg.batch_size}, input {args.input}; "
          f"calibrated on the CPU with {info['torch_threads']} thread(s), loopback {cal.bandwidth / 1e9:.2f} GB/s, "
          f"load average {' '.join(f'{v:.2f}' for v in info.get('loadavg') or [])}")
    print(format_predictions(cal, stages, cfg.batch_size, args.micro_batches))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Profile the configurations, print the table, write CSV/JSON/plot with --out."""
    check_out_dir(args.out, "--out")
    cfg = config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.parallel_model:
        return cmd_parallel_model(cfg, args)
    check_fits(cfg)
    rows: list[ProfileRow] = []

    def report(row: ProfileRow) -> None:
        rows.append(row)
        cuts = f", cuts after {', '.join(row.cut_names)}" if row.cut_names else ""
        print(f"  {row.arch} K={row.modules} {row.context}: peak {row.peak_bytes / 2**20:.1f} MiB, "
              f"{row.step_ms:.0f} ms/step{cuts}", flush=True)

    run_profile(cfg, report)
    print(format_table(rows))
    info = machine()
    load = " ".join(f"{v:.2f}" for v in info["loadavg"]) if info.get("loadavg") else "unknown"
    print(f"device {rows[0].device}, {info['torch_threads']} threads, load average {load} (1, 5, 15 min); "
          f"peak = {rows[0].peak_method}, above the bytes allocated when the step starts")
    if args.out:
        meta = {"config": vars(args) | {"func": None}, "machine": info,
                "title": f"{cfg.arch}, batch {cfg.batch_size}, input {args.input}"}
        for path in write_outputs(rows, args.out, meta):
            print(f"wrote {os.fspath(path)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `profile` to the command line."""
    p = sub.add_parser("profile", help="measure peak memory, step time and FLOPs of training steps over K")
    p.add_argument("--arch", default="resnet32",
                   help=f"{BACKBONES.describe()}; or package.module:function (your own model code, imported)")
    p.add_argument("--modules", "-K", default="1,2,4,8,16", help="comma-separated K values (1: E2E)")
    p.add_argument("--contexts", default="R0,E,R1,R1E", help="comma-separated context modes")
    p.add_argument("--batch-size", type=int, default=128, help="images per training step")
    p.add_argument("--input", default="3x32x32", help="input shape CxHxW")
    p.add_argument("--classes", type=int, default=10, help="number of classes")
    p.add_argument("--cuts", default="auto", help=f"cut table ({', '.join(TABLES)}) or explicit cuts for one K: "
                   "unit indices 3,7,11 or stage.block pairs 1.4,2.1")
    p.add_argument("--head", default="1c2f", help=f"local head: {HEADS.describe()}")
    p.add_argument("--loss", default="softmax", choices=LOSSES.names(), help="local loss")
    p.add_argument("--image-encoder", default="paper", choices=IMAGE_ENCODERS,
                   help="paper (default) or pooled (pool the image first: cheaper, not the paper's function)")
    p.add_argument("--no-lean-context", dest="lean_context", action="store_false",
                   help="straightforward context encoders (default: lean, recompute in backward)")
    p.add_argument("--lean-norm", action="store_true",
                   help="BatchNorm's backward without the CPU kernel's full-size temporary (same function)")
    p.add_argument("--checkpoint-segments", default="0",
                   help="comma-separated gradient checkpointing of each module's units: 0 (off), N segments or sqrt; "
                        "each configuration is profiled with each")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                   help="the optimizer whose state is held between steps (and counted in the bound)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster convs on CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the random batch")
    p.add_argument("--out", default=None, help="folder for profile.csv, profile.json and profile.png")
    add_settings(p, HEAD_FLAGS + RECON_FLAGS, keyed=True)  # the heads' and decoders' settings, as `contsup train`
    g = p.add_argument_group("parallel model (docs/parallel.md)")
    g.add_argument("--parallel-model", action="store_true",
                   help="calibrate the cost model of GPipe, 1F1B, the local pipeline and DDP on this machine "
                        "(the last --modules K, the first --contexts mode) and print its predictions per P")
    g.add_argument("--stages", default="2,4,8,16", help="stage counts P to predict")
    g.add_argument("--micro-batches", type=int, default=0, help="GPipe's and 1F1B's micro-batches (0: 4 per stage)")
    p.set_defaults(func=cmd_profile)
