"""Validation of a run, in one place: types (the schema's), ranges and names of every setting.

The command line, presets, `--config` files, checkpoint metadata and the Python API all pass through
`check_run` (a whole run) or `check_local` (a network's local-learning settings). Each check raises
ContsupError with one line naming the setting, the value and the allowed range, so a preset or a
checkpoint cannot hold a value that the command line would refuse (docs/security.md).
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from contsup.config import check_types, head_settings, settings
from contsup.data.specs import DATASETS
from contsup.device import check_device_name
from contsup.errors import ContsupError, check_float, check_int, check_type
from contsup.method.recon import recon_off
from contsup.method.settings import check_local as check_local_settings
from contsup.models import BACKBONES
from contsup.models.reference import check_reference, is_reference

MAX_DEPTH = 1202  # deepest ResNet that contsup builds (He et al.'s largest CIFAR ResNet)
MAX_SEED = 2**32 - 1
MAX_PROCESSES = 1024  # ranks started on one machine, and threads of each
ARCH_PATTERN = re.compile(r"resnet(\d+)")




def check_arch(arch: Any) -> None:
    """A registered backbone (`contsup.models.BACKBONES`); a CIFAR ResNet's N = 6n + 2 up to MAX_DEPTH."""
    check_type("arch", arch, str)
    if is_reference(arch):
        check_reference(arch)  # the user's code: its form only, nothing imported here
        return
    BACKBONES[arch]  # raises on a name no backbone takes
    match = ARCH_PATTERN.fullmatch(arch)
    if match and arch not in BACKBONES.names() and (
            (int(match.group(1)) - 2) % 6 or not 8 <= int(match.group(1)) <= MAX_DEPTH):
        raise ContsupError(f"unknown architecture {arch!r}: use resnetN with N = 6n+2 from 8 to {MAX_DEPTH}, "
                           f"e.g. resnet32, or one of {BACKBONES.describe()}")


def check_train(t: Any) -> None:
    """Every field of a TrainConfig: types, finite numbers, ranges (momentum 0 would disable Nesterov).

    Rates are bounded (lr <= 1e3) so that SGD's update cannot overflow float32 on a finite gradient.
    """
    check_types(t)
    check_int("epochs", t.epochs, 1, 100_000)
    check_int("batch_size", t.batch_size, 1, 2**24)
    check_float("lr", t.lr, 0.0, 1e3, low_open=True)
    check_float("momentum (Nesterov SGD)", t.momentum, 0.0, 1.0, low_open=True, high_open=True)
    check_float("weight_decay", t.weight_decay, 0.0, 1.0)
    if t.schedule not in ("step", "epoch"):
        raise ContsupError(f"unknown schedule {t.schedule!r}; choose from step, epoch")
    if t.warmup_epochs is not None:
        check_float("warmup_epochs", t.warmup_epochs, 0.0, t.epochs)
    if t.warmup_steps is not None:
        check_int("warmup_steps", t.warmup_steps, 0)
    check_float("context_lr_scale", t.context_lr_scale, 0.0, 1e3, low_open=True)
    check_float("clip_grad", t.clip_grad, 0.0)
    check_float("warmup_start_lr", t.warmup_start_lr, 0.0, 1e3, low_open=True)
    check_int("seed", t.seed, 0, MAX_SEED)
    check_int("eval_every", t.eval_every, 1, 100_000)
    check_int("eval_subset", t.eval_subset, 0)
    check_device_name(t.device)


def _default(path: str) -> Any:
    """A setting's default in the schema."""
    return settings()[path].default


def check_pipeline(p: Any) -> None:
    """Every field of a PipelineConfig, whether or not the run is pipelined."""
    check_types(p)
    check_int("replicas", p.replicas, 1, 4096)
    if p.stage_sizes is not None:
        if not p.stage_sizes:
            raise ContsupError("stage_sizes must list at least one stage")
        for size in p.stage_sizes:
            check_int("stage_sizes entries", size, 1, 10_000)
    check_int("inflight", p.inflight, 1, 1024)
    check_int("ranks", p.ranks, 1, MAX_PROCESSES)  # each a process of this machine
    check_int("threads", p.threads, 0, MAX_PROCESSES)  # torch's threads of each process (libgomp allocates per thread)
    check_int("micro_batches", p.micro_batches, 1, 2**24)
    for units in p.stage_units or []:
        check_int("stage_units entries", units, 1, 100_000)
    check_float("dist_timeout", p.timeout_s, 0.0, 7 * 24 * 3600.0, low_open=True)


def check_data(d: Any) -> None:
    """Every field of a DataConfig."""
    check_types(d)
    if d.name not in DATASETS:
        raise ContsupError(f"unknown dataset {d.name!r}; valid names: {', '.join(DATASETS)}")
    if d.root == "":
        raise ContsupError("data_root must name a folder, got ''")
    check_int("val_split", d.val_split, 0)
    check_int("train_subset", d.train_subset, 0)


def check_local(local: Any) -> None:
    """Every field of a LocalConfig (`contsup.method.settings.check_local`), and recon_dataset a known dataset."""
    check_local_settings(local)
    if local.recon_dataset is not None and local.recon_dataset not in DATASETS:
        raise ContsupError(f"unknown recon_dataset {local.recon_dataset!r}; valid names: {', '.join(DATASETS)}")
    check_local_sizes(local)


MAX_HEAD_WEIGHTS = 2**31  # the heads' hidden layers: 8 GiB of float32 (the paper's K = 16 heads hold 0.25 M)
MAX_AUGLOCAL_BLOCKS = 4096  # blocks copied into AugLocal heads over all cuts (the heads preset: 30)


HEAD_CONVS = re.compile(r"([0-2])c[1-3]f")  # a conv head's name: its count of 3 x 3 conv layers first
PAPER_CHANNELS = 64  # the widest feature map of the paper's ResNets (docs/method.md): a conv head's C at widen 1


def check_local_sizes(local: Any) -> None:
    """Refuse, from the settings alone and before anything is built, heads too large to build: (K - 1) heads of
    width W x widen hold about (K - 1) (W widen)^2 weights in their hidden layers, and a head of a 3 x 3 conv
    layers about 9 a (64 widen)^2 more on the paper's 64 channels; AugLocal copies up to aux_depth later blocks
    into each of them."""
    hidden = round(local.width * local.widen)
    convs = max((int(m.group(1)) for kind in local.head.split(",") if (m := HEAD_CONVS.fullmatch(kind.strip()))),
                default=0)
    weights = (local.modules - 1) * (hidden**2 + 9 * convs * round(PAPER_CHANNELS * local.widen) ** 2)
    if weights > MAX_HEAD_WEIGHTS:
        raise ContsupError(f"{local.modules - 1} local heads of width {hidden}"
                           + (f" and {convs} conv layers of {round(PAPER_CHANNELS * local.widen)} channels" if convs
                              else "") + f" would hold about {weights:,} weights (at most {MAX_HEAD_WEIGHTS:,}); "
                           "lower --width, --widen or --modules")
    blocks = (local.modules - 1) * local.aux_depth
    if "auglocal" in local.head and blocks > MAX_AUGLOCAL_BLOCKS:
        raise ContsupError(f"{local.modules - 1} AugLocal heads of up to {local.aux_depth} blocks would copy up to "
                           f"{blocks} blocks (at most {MAX_AUGLOCAL_BLOCKS}); lower --aux-depth or --modules")


# What an end-to-end network (K = 1: one module, no cut) never reads: its heads (every `head_setting`), context
# and cuts.
IDLE_AT_K1 = (*(f"local.{key}" for key in head_settings()), "local.loss", "local.cut_table", "local.cuts",
              "local.recon", "local.recon_dataset", "local.recon_patches", "local.recon_schedule",
              "local.image_encoder", "local.lean_context", "local.local_init", "local.context_scale",
              "train.context_lr_scale")


def idle_settings(local: Any, t: Any, p: Any = None) -> dict[str, str]:
    """The settings (dotted paths) that a run of these settings (and pipeline settings `p`) never reads, each with
    the reason."""
    idle: dict[str, str] = {}

    def mark(paths: Any, why: str) -> None:
        for path in paths:
            idle.setdefault(path, why)

    if local.modules == 1:
        mark(IDLE_AT_K1, "end-to-end at K = 1: no local head, context or cut")
    for f in fields(local):  # the head settings only some heads read (`head_setting(read_if=...)`)
        if f.metadata.get("read_if") and not f.metadata["read_if"][1](local):
            mark((f"local.{f.name}",), f.metadata["read_if"][0].format(**vars(local)))
    if recon_off(local.recon):
        mark(("local.recon_dataset", "local.recon_schedule", "local.recon_patches"), "no reconstruction: recon none")
    elif local.recon.lower() != "paper":
        mark(("local.recon_dataset",), "recon gives its own weights; recon_dataset picks the paper's")
    if t.optimizer != "sgd":
        mark(("train.momentum",), f"SGD's; {t.optimizer} does not read it")
    if local.context == "R0":
        mark(("train.context_lr_scale",), "no context encoders: context R0")
    if p is not None and p.parallel in ("local", "ddp"):  # DDP refuses stage_units itself: it has no stages
        mark(("pipeline.micro_batches", *(("pipeline.stage_units",) if p.parallel == "local" else ())),
             f"the schedules' (gpipe, 1f1b, interleaved, zbv); parallel {p.parallel} does not read it")
    if p is not None and (p.replicas > 1 or p.parallel == "ddp"):
        mark(("local.lean_norm",), "BatchNorm is synchronised across ranks (distributed/syncbn.py), not made lean")
    if t.eval_every >= t.epochs:  # the subset serves the epochs before the last, evaluated every eval_every
        mark(("train.eval_subset",), f"the last epoch is the only one evaluated, on the full test set: epochs "
                                     f"{t.epochs}, eval_every {t.eval_every}")
    return idle


def check_used(local: Any, t: Any, p: Any = None) -> None:
    """Refuse a setting changed from its default that the chosen network, optimizer or (with `p`) way of running
    never reads (it would be stored as if it had shaped the run). Checked where a run starts, so that stored runs
    stay readable."""
    sections = {"local": local, "train": t, "pipeline": p}
    unused: dict[str, list[str]] = {}
    for path, why in idle_settings(local, t, p).items():
        section, name = path.split(".")
        if getattr(sections[section], name) != _default(path):
            unused.setdefault(why, []).append(name)
    if unused:
        named = "; ".join(f"{', '.join(names)} ({why})" for why, names in unused.items())
        raise ContsupError(f"setting(s) {named} do nothing in this run; drop them, or choose what they shape")


def check_run(cfg: Any) -> None:
    """A whole RunConfig: data, architecture, local learning, training, pipeline and the run folder's name."""
    check_types(cfg)
    check_data(cfg.data)
    check_arch(cfg.arch)
    check_local(cfg.local)
    check_train(cfg.train)
    check_pipeline(cfg.pipeline)
    if cfg.local.lean_norm and cfg.train.bf16:
        raise ContsupError("lean_norm computes BatchNorm's gradients in float32: drop --bf16 or --lean-norm")
    if cfg.out == "":
        raise ContsupError("out must name a folder, got ''")
