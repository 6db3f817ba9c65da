"""The one configuration schema: every setting of a run, its type, default and meaning, written once.

Everything else is derived from these dataclasses: the `contsup train` flags (a field's trailing comment
is its help text, its key its flag), preset keys (`reproduce/presets.py`), `--config` TOML files,
`--print-config`, and the run configuration stored in checkpoints (read back by `RunConfig.from_dict`,
which rejects unknown settings and fills missing ones with their defaults). A setting is named by its
dotted path (`train.lr`) or by its key: the field name, or the `key` given in its metadata (`dataset`
for `data.name`); keys are unique across the schema.

The schema is data: it imports nothing from the method. Each section checks its fields' types when it
is built (`check_types`: no string for a boolean, no fractional count, finite numbers, `Literal`
choices); ranges and names (registered heads, context modes, ...) are checked in `contsup.checks`.
"""

from __future__ import annotations

import difflib
import inspect
import io
import json
import math
import tokenize
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from functools import cache
from typing import Any, Literal

from contsup.errors import ContsupError


def named(default: Any, key: str, *aliases: str) -> Any:
    """A field whose preset key / flag is `key` (plus `aliases`, e.g. an older flag name)."""
    return field(default=default, metadata={"key": key, "aliases": aliases})


# When a head setting is read (`head_setting(read_if=...)`): why it is idle otherwise, whether a LocalConfig reads it.
ReadIf = tuple[str, typing.Callable[[Any], bool]]
AUG: ReadIf = ("no AugLocal head: head {head}", lambda local: "auglocal" in local.head)
MAN: ReadIf = ("MAN is off: man_momentum = 0", lambda local: local.man_momentum != 0)


def head_setting(default: Any, read_if: ReadIf | None = None) -> Any:
    """A setting of the local heads and what wraps them (MAN, PFF, HPFF's cascade): reproduce's tables tell runs
    apart by it, an E2E run (no heads) holds its default, and `contsup profile` has its flag (`head_settings`).
    With `read_if`, a run that changes it where it is not read is refused (`checks.idle_settings`)."""
    return field(default=default, metadata={"head": True, "read_if": read_if})


def type_name(hint: Any) -> str:
    """A type hint as a user reads it: int, a float, true or false, one of 'a', 'b', ..."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {type_name(typing.get_args(hint)[0])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "text",
            type(None): "none"}.get(hint, str(hint))


def fits(value: Any, hint: Any) -> bool:
    """Whether `value` has the type `hint` (a bool is no number, an int is a float, floats are finite)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(value == c and type(value) is type(c) for c in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(hint))
    if origin is list:
        return isinstance(value, list) and all(fits(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def choices(section: type, name: str) -> tuple[Any, ...]:
    """The choices of a `Literal` field of a schema section (`choices(LocalConfig, "image_encoder")`)."""
    hint = typing.get_type_hints(section)[name]
    literal = next(h for h in (hint, *typing.get_args(hint)) if typing.get_origin(h) is Literal)
    return typing.get_args(literal)


def check_types(section: Any) -> None:
    """Every field of a schema section (a dataclass) has its declared type; else one line naming it."""
    hints = typing.get_type_hints(type(section))
    for f in fields(section):
        value = getattr(section, f.name)
        if is_dataclass(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                raise ContsupError(f"setting {f.name} must be a table of settings, got {value!r}")
            continue
        if not fits(value, hints[f.name]):
            raise ContsupError(f"setting {f.metadata.get('key', f.name)} must be {type_name(hints[f.name])}, "
                               f"got {value!r}")


class Section:
    """A schema section: its field types are checked when it is built (and by `check_types` after a change)."""

    def __post_init__(self) -> None:
        check_types(self)


@dataclass
class DataConfig(Section):
    """Which dataset, and how much of it."""

    name: str = named("fashion-mnist", "dataset", "data")  # dataset name (see `contsup data list`)
    root: str | None = named(None, "data_root", "data_dir")  # directory holding the dataset's files
    download: bool = True  # download the dataset when it is missing
    val_split: int = 0  # training images held out for validation
    train_subset: int = 0  # train on this many images only (0: all)


@dataclass
class LocalConfig(Section):
    """How to cut the network and train it locally (defaults: the paper's ContSup setting)."""

    modules: int = named(4, "modules", "K")  # number of gradient-isolated modules K (1: end-to-end)
    context: str = "R1E"  # context mode: R0 (plain greedy local learning), E, Rn or RnE
    head: str = head_setting("1c2f")  # local head: <a>c<b>f, auglocal, clstoken, meantoken, blocktoken or token
    aux_depth: int = head_setting(2, AUG)  # auglocal: blocks d of each head (copies of later units; docs/heads.md)
    aux_pyramid: float = head_setting(0.5, AUG)  # auglocal: pyramid coefficient tau (0: every head d blocks deep)
    man_momentum: float = head_setting(0.0)  # MAN: > 0 puts EMA copies of the next unit before each head (0.995: MAN's)
    man_ema_start: Literal["paper", "random"] = head_setting("paper", MAN)  # MAN: copy starts as next unit or random
    man_scale: bool = head_setting(False, MAN)  # MAN++: a learnable s per cut, s LB(h) + (2 - s) EMA(h), s from 1
    head_patches: int = head_setting(1)  # PFF: run each head on n x n patches of h_k and average its outputs (1: off)
    loss: str = "softmax"  # local loss: softmax or contrast
    width: int = head_setting(128)  # hidden width W of the local heads
    widen: float = head_setting(1.0)  # multiplies the heads' widths
    cut_table: str = "auto"  # auto, equal-units, balanced (rules) or a paper table (equal, balanced-cifar10, ...)
    cuts: str | None = None  # explicit cuts: unit indices 3,7,11, stage.block pairs 1.2,2.1; or a cut_table name
    recon: str | None = None  # InfoPro reconstruction term: none, paper (the paper's weights) or ixx1,ixy1,ixx2,ixy2
    recon_dataset: str | None = None  # with recon = paper: take the paper's weights for this dataset instead
    recon_patches: int = 1  # HPFF's patched decoders: n x n decoders, one per patch of h_k and the image (1: off)
    recon_schedule: Literal["cut", "stage", "hpff"] = "cut"  # recon weights by cut k/(K-2), by stage, or k/(K-1)
    cascade: float = head_setting(0.0)  # HPFF's cascade: weight wy of a second path through the module before (0: off)
    image_encoder: Literal["paper", "pooled"] = "paper"  # paper (at the image's resolution) or pooled (cheaper)
    lean_context: bool = True  # context encoders keep only their input for backward and recompute (same function)
    lean_norm: bool = False  # BatchNorm's backward without the CPU kernel's full-size temporary (same function)
    checkpoint_segments: int | Literal["sqrt"] = 0  # recompute each module's units in N segments (0: off; sqrt)
    local_init: Literal["torch", "kaiming"] = "torch"  # heads and encoders: PyTorch defaults or the reference's
    context_scale: float = 1.0  # initial weight of each context encoder's last BatchNorm (1.0: as in the paper)


@dataclass
class TrainConfig(Section):
    """The optimisation recipe; defaults are the paper's CIFAR-10 recipe (docs/method.md, recipe)."""

    epochs: int = 160  # training epochs (the paper's recipe)
    batch_size: int = 1024  # images per step (the paper's recipe)
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd (Nesterov; the paper's) or adamw (transformers; no decay on norms)
    lr: float = 0.8  # peak learning rate (the paper's SGD rate for batch 1024; scale it with the batch size)
    momentum: float = 0.9  # Nesterov momentum (sgd)
    weight_decay: float = 1e-4  # weight decay (sgd: L2 on every parameter; adamw: decoupled, not on norms/biases)
    schedule: Literal["step", "epoch"] = "step"  # step: warm-up and cosine every step; epoch: per epoch (paper's code)
    warmup_epochs: float | None = None  # warm-up epochs; None: 10 of every 160 (per step: at least min(1, epochs/4))
    warmup_steps: int | None = None  # the warm-up in steps instead of epochs (per-step schedule only)
    warmup_start_lr: float = 0.01  # learning rate at the start of the warm-up
    context_lr_scale: float = 1.0  # the context encoders' rate relative to the rest (1.0: as in the paper)
    clip_grad: float = 0.0  # clip each module's gradient norm (its block, head and incoming encoders) to this; 0: off
    seed: int = 0  # seeds the weights, the data order and augmentation, and any split
    eval_every: int = 1  # evaluate every N epochs (the last epoch always)
    eval_subset: int = 0  # epochs before the last evaluate on this many seeded test images; 0: all (the last: all)
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    bf16: bool = False  # bf16 autocast (CUDA)
    channels_last: bool = False  # channels_last memory format of the network and batches (CPU and CUDA)
    progress: bool = True  # progress bars (training: last = the last module's loss, local = the heads' mean)
    step_peak: bool = True  # after training, measure one step's peak memory on a copy (the summary's step peak)
    tensorboard: bool = False  # also log each epoch to <out>/tensorboard (pip install 'contsup[tensorboard]')


# How the ranks share the work: contsup's local pipeline, or an end-to-end baseline (docs/parallel.md).
Parallel = Literal["local", "gpipe", "1f1b", "interleaved", "zbv", "ddp"]


@dataclass
class PipelineConfig(Section):
    """How the ranks of a pipelined run (`torchrun ... contsup train --pipeline`) split the work."""

    replicas: int = 1  # data-parallel copies R of the pipeline; P = world size / R stages each
    stage_sizes: list[int] | None = None  # modules per stage, e.g. 3,5,8; None: balanced by measured cost
    inflight: int = 2  # micro-batches a stage may have sent but not yet delivered
    timeout_s: float = named(300.0, "dist_timeout")  # seconds before a silent peer counts as failed
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto (nccl with CUDA, else gloo), gloo or nccl
    parallel: Parallel = "local"  # local: modules on ranks (or one process); the others: end to end (docs/parallel.md)
    micro_batches: int = 4  # gpipe, 1f1b, interleaved, zbv: micro-batches per batch (they must divide it)
    stage_units: list[int] | None = None  # gpipe, 1f1b, interleaved, zbv: backbone units per stage; None: balanced
    ranks: int = 1  # processes `contsup train` starts on this machine, as torchrun would (1: this process)
    threads: int = 0  # torch threads of each process (0: torch's default; started ranks: 1)

    def __post_init__(self) -> None:
        for name in ("stage_sizes", "stage_units"):
            text = getattr(self, name)
            if isinstance(text, str):  # the flag's text
                try:
                    setattr(self, name, [int(v) for v in text.split(",")])
                except ValueError:
                    flag = "--" + name.replace("_", "-")
                    raise ContsupError(f"cannot read {flag} {text!r}: use counts like 3,5,8") from None
        super().__post_init__()


@dataclass
class RunConfig(Section):
    """One training job."""

    data: DataConfig = field(default_factory=DataConfig)
    arch: str = "resnet32"  # backbone: a registered name (resnetN, vit-mini, ...) or your package.module:function
    local: LocalConfig = field(default_factory=LocalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    out: str | None = None  # run folder: checkpoint.pt, metrics.jsonl, summary.json

    def __post_init__(self) -> None:
        super().__post_init__()
        if ":" not in self.arch:  # a registered name, any case; package.module:function (the user's code) as is
            self.arch = self.arch.lower()

    def check_types(self) -> None:
        """Every section's field types (after settings were changed in place)."""
        for section in (self, self.data, self.local, self.train, self.pipeline):
            check_types(section)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "run configuration") -> RunConfig:
        """Inverse of `to_dict`; unknown settings raise (naming `where`), missing ones take their defaults."""
        return build(cls, d, where)


def build(cls: type, d: Mapping[str, Any], where: str, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from nested plain data, checked against its fields."""
    if not isinstance(d, Mapping):
        raise ContsupError(f"{where}: {prefix.rstrip('.') or 'the settings'} must be a table, got {d!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(str(k) for k in set(d) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=3)
        hint = f"did you mean {' or '.join(prefix + k for k in close)}?" if close else \
            f"known: {', '.join(prefix + k for k in known)}"
        raise ContsupError(f"{where}: unknown setting(s) {', '.join(prefix + k for k in unknown)}; {hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        sub = hints[name]
        kwargs[name] = build(sub, value, where, f"{prefix}{name}.") if is_dataclass(sub) and not isinstance(
            value, sub) else value
    return cls(**kwargs)


SECTIONS = frozenset({"data", "local", "train", "pipeline"})  # RunConfig's tables of settings


def head_settings() -> tuple[str, ...]:
    """The keys of the heads' and head wrappers' settings (`head_setting`), in schema order."""
    return tuple(f.metadata.get("key", f.name) for f in fields(LocalConfig) if f.metadata.get("head"))


# -- settings by name ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One leaf setting of the schema: its dotted path, names, type, default and help text."""

    path: str  # e.g. "train.lr"
    key: str  # the name used by presets and flags, e.g. "lr"
    aliases: tuple[str, ...]
    type: Any
    default: Any
    help: str


def _comments(cls: type) -> dict[str, str]:
    """The trailing comment of each field line in a dataclass's source (its help text)."""
    out: dict[str, str] = {}
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return out
    line_field: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.start[0] not in line_field:
            line_field[tok.start[0]] = tok.string
        elif tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            out[line_field[tok.start[0]]] = tok.string.lstrip("# ").strip()
    return out


# Settings that say where a run reads and writes, on which device and what it shows, not what it computes:
# they may change on --resume, and run comparisons and sweeps leave them out.
PLACE = frozenset({"out", "data.root", "data.download", "train.device", "train.progress", "train.tensorboard",
                   "train.step_peak"})


@cache
def settings() -> dict[str, Setting]:
    """Every leaf setting of RunConfig by dotted path, in schema order."""
    out: dict[str, Setting] = {}

    def walk(cls: type, prefix: str) -> None:
        hints, helps = typing.get_type_hints(cls), _comments(cls)
        for f in fields(cls):
            if is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            key = f.metadata.get("key", f.name)
            out[prefix + f.name] = Setting(prefix + f.name, key, tuple(f.metadata.get("aliases", ())),
                                           hints[f.name], default, helps.get(f.name, ""))

    walk(RunConfig, "")
    keys = [n for s in out.values() for n in (s.key, *s.aliases)]
    assert len(keys) == len(set(keys)), "setting keys must be unique"
    return out


def resolve_name(name: str) -> str:
    """The dotted path of a setting named by its path, key or alias; unknown names raise ContsupError."""
    table = settings()
    if name in table:
        return name
    for s in table.values():
        if name == s.key or name in s.aliases:
            return s.path
    names = [n for s in table.values() for n in (s.key, *s.aliases, s.path)]
    close = difflib.get_close_matches(str(name), names, n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else "see contsup train --help or --print-config"
    raise ContsupError(f"unknown setting {name!r}; {hint}")


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.lr": 0.1, "dataset": "svhn"} -> {"train": {"lr": 0.1}, "data": {"name": "svhn"}}."""
    out: dict[str, Any] = {}
    named_by: dict[str, str] = {}
    for name, value in flat.items():
        path = resolve_name(name)
        if path in named_by:
            raise ContsupError(f"{named_by[path]!r} and {name!r} both set {path}; give it once")
        named_by[path] = name
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf of nested settings; only a section's table is opened (`train.lr`), so
    any other table is one unknown setting, however deep it nests."""
    for k, v in d.items():
        if isinstance(v, Mapping) and not prefix and k in SECTIONS:
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Nested settings, later layers overriding earlier ones leaf by leaf."""
    out: dict[str, Any] = {}
    for layer in layers:
        for path, value in flatten(layer):
            node = out
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return out


def resolve(*layers: Mapping[str, Any]) -> RunConfig:
    """The RunConfig of the defaults overridden by nested `layers` in order (a file, then flags)."""
    return RunConfig.from_dict(merge(*layers))


def to_toml(cfg: RunConfig) -> str:
    """The configuration as a TOML file that `--config` reads back (None-valued settings left out)."""
    lines: list[str] = []
    sections: dict[str, list[str]] = {}
    for path, value in flatten(cfg.to_dict()):
        if value is None:
            continue
        *parents, leaf = path.split(".")
        text = json.dumps(value)
        (sections.setdefault(".".join(parents), []) if parents else lines).append(f"{leaf} = {text}")
    for name, body in sections.items():
        lines += ["", f"[{name}]", *body]
    return "\n".join(lines) + "\n"
