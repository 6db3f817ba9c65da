"""`contsup train` and `contsup eval`."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import tomllib
import typing
from collections.abc import Callable, Collection
from typing import Any

from contsup.config import RunConfig, flatten, nest, resolve, settings, to_toml
from contsup.data import dataset_info
from contsup.data.download import check_data_dir
from contsup.data.sources import presence
from contsup.distributed.spawn import train_run
from contsup.errors import ContsupError
from contsup.files import read_text_file
from contsup.method.cuts import TABLES
from contsup.method.heads import HEADS
from contsup.models import BACKBONES
from contsup.models.reference import allow, is_reference
from contsup.run import build_network, check_settings, evaluate_checkpoint, prepare_run
from contsup.train.runfolder import check_not_written, continue_hint

EXAMPLES = """examples:
  contsup train --data cifar10 --modules 16 --context R1E --out runs/k16   # the paper's recipe
  contsup train --modules 1 --epochs 2 --train-subset 10000 --batch-size 128 --lr 0.1 --out runs/e2e
                                                                    # a short end-to-end run on a CPU
  contsup train --modules 16 --context R0 --head 0c1f --dry-run     # build plain greedy learning, print it
  contsup train --data cifar10 --modules 16 --context R1E --out runs/k16 --resume   # continue it
  contsup runs runs/k16 runs/e2e --out runs/report                  # compare runs: table and plots

The progress bar shows last = the last module's loss and local = the local heads' mean loss on the
current batch; the line after each epoch gives their means over the last quarter of the epoch."""


# Defaults that the command line fills in (config_from_args), not the schema: shown in the help as they are.
CLI_DEFAULTS = {"out": "runs/<dataset>-<arch>-K<modules>-<context>, created"}
# Help texts that the registries write (every registered name, as registered)
CLI_HELP = {"arch": f"backbone: one of {BACKBONES.describe()}; or package.module:function, a function of your own "
                    "code returning any nn.Module (imported, like torchrun script.py; docs/models.md)",
            "local.head": f"local head: {HEADS.describe()}; or one per cut, a,b,... The default 1c2f reads feature "
                          "maps; a cut that outputs tokens takes clstoken (meantoken without a class token)"}


def add_settings(p: argparse.ArgumentParser, paths: Collection[str] | None = None, keyed: bool = False) -> None:
    """One flag per setting of the schema (`contsup.config`), or of the settings at `paths`, grouped by section,
    defaults in the help; a flag not given leaves its setting out of the parsed arguments, which name each
    setting by its dotted path (by its key with `keyed`, as `contsup profile` records them)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for s in settings().values():
        if paths is not None and s.path not in paths:
            continue
        dest = s.key if keyed else s.path
        section = s.path.split(".")[0] if "." in s.path else "run"
        g = groups.setdefault(section, p.add_argument_group(f"{section} settings ({section}.*)"
                                                            if section != "run" else "run settings"))
        flags = [f"-{n}" if len(n) == 1 else f"--{n.replace('_', '-')}" for n in (s.key, *s.aliases)]
        help_text = f"{CLI_HELP.get(s.path, s.help)} (default: {CLI_DEFAULTS.get(s.path, s.default)})"
        if s.type is bool:
            g.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
        elif typing.get_origin(s.type) is typing.Literal:
            g.add_argument(*flags, dest=dest, choices=typing.get_args(s.type), default=argparse.SUPPRESS,
                           help=help_text)
        else:
            g.add_argument(*flags, dest=dest, type=_scalar(s.type), default=argparse.SUPPRESS,
                           metavar=s.key.upper(), help=help_text)


def _scalar(t: Any) -> Callable[[str], Any]:
    """How a flag's text becomes a value: int and float settings are numbers, the rest text (the schema parses it)."""
    base = [a for a in typing.get_args(t) if a is not type(None)] or [t]
    if base[0] is int and len(base) > 1:  # a count or a word (checkpoint_segments: N or sqrt)
        return lambda text: int(text) if text.isascii() and text.isdigit() else text
    return base[0] if base[0] in (int, float) else str


def read_config_file(path: str) -> dict[str, Any]:
    """A `--config` TOML file: tables [data], [local], [train], [pipeline] or dotted / plain setting names."""
    try:
        doc = tomllib.loads(read_text_file(path, "config file"))
    except tomllib.TOMLDecodeError as err:
        raise ContsupError(f"{path}: invalid TOML: {err}") from None
    return nest(dict(flatten(doc)))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of the defaults, overridden by `--config FILE`, overridden by the flags given."""
    flags = nest({k: v for k, v in vars(args).items() if k in settings()})
    cfg = resolve(read_config_file(args.config) if args.config else {}, flags)
    if cfg.out is None:
        cfg.out = f"runs/{cfg.data.name}-{cfg.arch.replace(':', '-')}-K{cfg.local.modules}-{cfg.local.context}"
    cuts = (cfg.local.cuts or "").strip()
    if cuts in TABLES:  # `--cuts balanced`, as `contsup profile` takes it: a cut rule by name
        if cfg.local.cut_table not in ("auto", cuts):
            raise ContsupError(f"--cuts {cuts} and --cut-table {cfg.local.cut_table} name two cut rules; give one")
        cfg.local.cut_table, cfg.local.cuts = cuts, None
    elif close := difflib.get_close_matches(cuts, TABLES, n=1, cutoff=0.8):
        raise ContsupError(f"unknown cut rule --cuts {cuts}; did you mean {close[0]}?")
    if is_reference(cfg.arch):
        allow(cfg.arch)  # the user named their model's code: a resumed run may rebuild it (every rank too)
    return cfg


def recipe_line(cfg: RunConfig) -> str:
    """The training recipe in one line (what a dry run shows before the network)."""
    t = cfg.train
    warmup = f"{t.warmup_steps} steps" if t.warmup_steps is not None else (
        "default rule" if t.warmup_epochs is None else f"{t.warmup_epochs} epochs")
    subset = f"{cfg.data.train_subset} training images" if cfg.data.train_subset else "all training images"
    optimizer = f"SGD (Nesterov momentum {t.momentum})" if t.optimizer == "sgd" else t.optimizer
    return (f"recipe: {t.epochs} epochs over {subset}, batch {t.batch_size}, {optimizer}, lr {t.lr:g} from "
            f"{t.warmup_start_lr:g}, weight decay {t.weight_decay:g}, {t.schedule} schedule, warm-up {warmup}, "
            f"seed {t.seed}")


def _test_set(summary: dict) -> str:
    """Which test images the final error is measured on, as the summary records it."""
    if "final_test_images" not in summary:
        return ""
    n = summary["final_test_images"]
    full = summary["final_test_set"] == "full"
    return f" on the full test set ({n} images)" if full else f" on {n} seeded test images"


def _per_rank(summary: dict) -> str:
    """`; per rank a / b MiB` for a run on ranks, else nothing."""
    ranks = summary.get("rank_step_peak_memory_bytes")
    return "; per rank " + " / ".join(f"{b / 2**20:.1f}" for b in ranks) + " MiB" if ranks else ""


def format_summary(summary: dict) -> str:
    """The closing lines of a training run."""
    p = summary["params"]
    return "\n".join([
        f"final test error: {summary['final_test_error']:.2f}%{_test_set(summary)}   "
        f"(best epoch {summary['best_epoch']}: {summary['best_test_error_selected_on_test']:.2f}%, "
        "selected on the test set, for comparison only)",
        f"training time: {summary['train_time_s']:.1f} s   {summary['images_per_s']:.0f} images/s   "
        f"device {summary['device']}",
        f"step peak memory: {summary['step_peak_memory_bytes'] / 2**20:.1f} MiB (one training step at the run's "
        f"batch size, {summary['step_peak_memory_kind']})" + _per_rank(summary) if "step_peak_memory_bytes" in summary
        else "step peak memory: not measured (--no-step-peak, or micro-batches in one process)",
        f"process peak memory: {summary['peak_memory_bytes'] / 2**20:.0f} MiB ({summary['peak_memory_kind']}: "
        "runtime and dataset included)",
        "parameters: " + ", ".join(f"{k} {v:,}" for k, v in p.items()),
    ])


def cmd_train(args: argparse.Namespace) -> int:
    """Train a network with local learning (or print its configuration or summary, and exit)."""
    cfg = config_from_args(args)
    if args.print_config:
        check_settings(cfg)
        print(to_toml(cfg), end="")
        return 0
    if args.dry_run:
        if cfg.out is not None and os.path.isdir(cfg.out):
            check_not_written(cfg.out)
        device, _ = prepare_run(cfg, args.resume)  # every check of a real run before its data is loaded
        info = dataset_info(cfg.data.name)
        net = build_network(cfg, info.channels, info.num_classes, info.size)
        print(f"device: {device}   data: {presence(cfg.data.name, cfg.data.root, cfg.data.download)}")
        print(recipe_line(cfg))
        print(net.describe())
        print(json.dumps(net.param_counts()))
        return 0
    pipeline = args.pipeline or int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        summary = train_run(cfg, resume=args.resume, pipeline=pipeline)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(continue_hint(cfg.out)) from None
    if summary is None:  # not rank 0
        return 0
    print(format_summary(summary))
    print(f"run folder: {cfg.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on its dataset's test split."""
    check_data_dir(args.data_dir)
    result = evaluate_checkpoint(args.checkpoint, args.device, args.batch_size, args.data_dir, args.arch)
    method = "end-to-end (K=1)" if result["modules"] == 1 else f"K={result['modules']} {result['context']}"
    print(f"{result['arch']} {method} on {result['dataset']}, "
          f"epoch {result['epoch']}: test error {result['test_error']:.2f}%  loss {result['test_loss']:.4f}")
    print(json.dumps(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train` and `eval` to the command line."""
    p = sub.add_parser("train", help="train a network with greedy local learning and Context Supply",
                       description="Train a network cut into K gradient-isolated modules (K = 1: end-to-end). "
                                   "Defaults are the paper's CIFAR-10 recipe (160 epochs, batch 1024, lr 0.8). "
                                   "Settings come from their defaults, then --config FILE, then the flags given.",
                       epilog=EXAMPLES)
    g = p.add_argument_group("command")
    g.add_argument("--config", default=None, help="a TOML file of settings (as --print-config writes)")
    g.add_argument("--print-config", action="store_true", help="print the resolved settings as TOML and exit")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--dry-run", action="store_true",
                   help="run every check of a real run (settings, sizes, device, --out), say whether the dataset "
                        "is present, print the recipe and the network, exit")
    g.add_argument("--pipeline", action="store_true",
                   help="run as a pipeline rank: torchrun --nproc-per-node N -m contsup train ... --pipeline "
                        "(implied by WORLD_SIZE > 1; --ranks N starts the N ranks on this machine itself)")
    add_settings(p)
    p.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="test error of a saved checkpoint")
    e.add_argument("checkpoint", help="checkpoint.pt or its run folder")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--arch", default=None, metavar="PACKAGE.MODULE:FUNCTION",
                   help="the model code a checkpoint was trained on, when it is your own (imported only if named)")
    e.add_argument("--batch-size", type=int, default=1024, help="images per forward pass")
    e.add_argument("--data-dir", default=None,
                   help="directory holding the checkpoint's dataset (default: the usual places; never downloaded)")
    e.set_defaults(func=cmd_eval)
