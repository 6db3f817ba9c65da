"""`contsup profile`: real training steps per (K, context) configuration, measured memory, time and FLOPs."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from contsup.checks import IDLE_AT_K1
from contsup.config import LocalConfig, TrainConfig
from contsup.device import activate, resolve_device, synchronize
from contsup.errors import ContsupError
from contsup.memory import PeakMemory, SavedTensorCounter, measure_peak, saved_bytes
from contsup.method.local_step import local_step
from contsup.method.network import LocalNetwork
from contsup.models import build_arch
from contsup.models.chain import memory_format
from contsup.profile.bound import lower_bound
from contsup.profile.flops import count_flops
from contsup.tables import markdown_table, pyplot, save_figure, text_table, write_csv
from contsup.train.optim import STATE_BUFFERS, make_optimizer

E2E = "E2E"


@dataclass
class ProfileConfig:
    """What to profile: one network, several K and context modes, one batch and input shape."""

    arch: str = "resnet32"
    modules: Sequence[int] = (1, 2, 4, 8, 16)
    contexts: Sequence[str] = ("R0", "E", "R1", "R1E")
    batch_size: int = 128
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    cut_table: str = "auto"
    cuts: str | None = None  # explicit cuts (unit indices 3,7 or stage.block 1.4) for the one K > 1 profiled
    head: str = "1c2f"
    loss: str = "softmax"
    warmup: int = 2  # untimed steps first (optimizer state, allocator warm-up)
    steps: int = 5  # timed steps; the median is reported
    device: str = "auto"
    channels_last: bool = False  # channels_last memory format for the network and the batch
    memory: bool = True  # measure peak memory and saved tensors (one extra step each)
    flops: bool = True  # count FLOPs (one extra step)
    seed: int = 0
    checkpoint_segments: Sequence[int | str] = (0,)  # each configuration with each (0: plain; N or "sqrt")
    optimizer: Literal["sgd", "adamw"] = "sgd"  # whose state lives between steps (train/optim.py, STATE_BUFFERS)
    local: dict[str, Any] = field(default_factory=dict)  # further LocalConfig fields (e.g. recon)


@dataclass
class ProfileRow:
    """Everything measured for one configuration."""

    arch: str
    modules: int
    context: str  # "E2E" for K = 1; "(pooled)", "(straightforward)", "(ckpt N)" added for those settings
    cuts: list[int]
    batch_size: int
    input_shape: list[int]
    device: str
    peak_bytes: int  # peak tensor memory allocated during a training step, above its start
    peak_method: str
    state_bytes: int  # parameters, buffers and optimizer state held between steps
    bound_bytes: int  # the cut table's lower bound without recomputation (`lower_bound`): compare peak + state
    saved_peak_bytes: int  # most bytes saved for backward alive at once during the step
    saved_total_bytes: int  # bytes saved for backward over the whole step
    step_ms: float  # median over the timed steps
    step_ms_all: list[float]
    images_per_s: float
    params: dict[str, int]
    flops: dict[str, int]
    cut_names: list[str] = field(default_factory=list)  # the module (or stage.block) before each cut


def configurations(cfg: ProfileConfig) -> list[tuple[int, str, int | str]]:
    """(K, context, checkpoint segments) to run: K = 1 once per segments value, as E2E (context plays no part
    there), every mode otherwise."""
    if not cfg.modules or not cfg.contexts or not cfg.checkpoint_segments:
        raise ContsupError("give at least one K, one context mode and one checkpoint_segments value")
    out: list[tuple[int, str, int | str]] = []
    for k in cfg.modules:
        if k < 1:
            raise ContsupError(f"K must be >= 1, got {k}")
        for seg in cfg.checkpoint_segments:
            out += [(1, E2E, seg)] if k == 1 else [(k, c, seg) for c in cfg.contexts]
    return list(dict.fromkeys(out))


def build(cfg: ProfileConfig, modules: int, context: str, device: torch.device,
          segments: int | str = 0) -> LocalNetwork:
    """The network for one configuration, on the device."""
    torch.manual_seed(cfg.seed)
    backbone = build_arch(cfg.arch, cfg.input_shape[0], cfg.num_classes, cfg.input_shape[-1])
    # K = 1 is end to end: the settings of heads, decoders, context and cuts are left out (`IDLE_AT_K1`)
    settings = {k: v for k, v in cfg.local.items() if modules > 1 or f"local.{k}" not in IDLE_AT_K1}
    local = LocalConfig(
        modules=modules, context="R0" if context == E2E else context, head=cfg.head, loss=cfg.loss,
        cut_table=cfg.cut_table if modules > 1 else "auto", cuts=cfg.cuts if modules > 1 else None,  # K = 1: no cut
        checkpoint_segments=segments, **settings,
    )
    return LocalNetwork(backbone, local, torch.zeros(1, *cfg.input_shape)).to(device)


def state_bytes(net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of parameters, buffers and optimizer state (what lives between steps)."""
    tensors = [*net.parameters(), *net.buffers()]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def profile_one(cfg: ProfileConfig, modules: int, context: str, segments: int | str = 0) -> ProfileRow:
    """Build one configuration and measure it with real training steps on a synthetic batch."""
    device = activate(resolve_device(cfg.device))  # the same flags as training (cuDNN autotuning, TF32)
    net = build(cfg, modules, context, device, segments)
    net.train()
    fmt = memory_format(cfg.channels_last)
    net = net.to(memory_format=fmt)
    optimizer = make_optimizer(net.named_parameters(), TrainConfig(lr=0.01, optimizer=cfg.optimizer))
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch_size, *cfg.input_shape, generator=g).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g).to(device)
    pixels = torch.rand_like(x) if net.needs_pixels else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        local_step(net, x, y, pixels)
        optimizer.step()

    for _ in range(max(cfg.warmup, 1)):  # at least one: the optimizer's momentum exists from then on
        step()
    times = []
    for _ in range(cfg.steps):
        synchronize(device)  # host sync: the clock starts when the device is idle
        start = time.perf_counter()
        step()
        synchronize(device)  # host sync: the time covers the step's kernels
        times.append(1000 * (time.perf_counter() - start))
    optimizer.zero_grad(set_to_none=True)
    peak, saved = PeakMemory(0, "not measured"), SavedTensorCounter()
    if cfg.memory:
        _, peak = measure_peak(step, device)
        _, saved = saved_bytes(step, exclude=net)
    flops = count_flops(net, step)[1] if cfg.flops else {}
    median = statistics.median(times) if times else float("nan")
    labels = [net.config.image_encoder] if net.mode.image and net.config.image_encoder != "paper" else []
    if not net.config.lean_context and (net.mode.image or net.mode.window):
        labels.append("straightforward")
    if net.config.lean_norm:
        labels.append("lean norm")
    if segments:
        labels.append(f"ckpt {segments}")
    if labels:
        context = f"{context} ({', '.join(labels)})"
    return ProfileRow(
        arch=cfg.arch, modules=modules, context=context, cuts=list(net.cuts), batch_size=cfg.batch_size,
        input_shape=list(cfg.input_shape), device=str(device), peak_bytes=peak.peak_bytes,
        peak_method=peak.method, state_bytes=state_bytes(net, optimizer),
        bound_bytes=lower_bound(net, cfg.batch_size, STATE_BUFFERS[cfg.optimizer]).total,
        saved_peak_bytes=saved.peak,
        saved_total_bytes=saved.total, step_ms=median, step_ms_all=times,
        images_per_s=1000 * cfg.batch_size / median if times else float("nan"),
        params=net.param_counts(), flops=flops, cut_names=list(net.cut_names),
    )


def step_memory_floor(cfg: ProfileConfig) -> int:
    """Bytes that any training step of `cfg` must hold at once, from its settings alone (nothing allocated).

    The backbone is built and run on the meta device; a step holds at least its input batch and the
    largest single activation with its gradient, whatever K and the context mode.
    """
    largest = [0]

    def record(module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    with torch.device("meta"):
        backbone = build_arch(cfg.arch, cfg.input_shape[0], cfg.num_classes, cfg.input_shape[-1])
        hooks = [m.register_forward_hook(record) for m in backbone.modules()]
        x = torch.empty(cfg.batch_size, *cfg.input_shape)
        with torch.no_grad():
            backbone(x)
    for h in hooks:
        h.remove()
    return x.numel() * x.element_size() + 2 * largest[0]


def machine_memory(device: torch.device) -> int:
    """Bytes of memory on `device`: the GPU's total, or the machine's physical memory."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(cfg: ProfileConfig) -> None:
    """Refuse, before anything is allocated, a batch and input whose step cannot fit the device's memory."""
    device = resolve_device(cfg.device)
    need, have = step_memory_floor(cfg), machine_memory(device)
    if need > have:
        raise ContsupError(f"one training step of {cfg.arch} at batch {cfg.batch_size} and input "
                           f"{'x'.join(map(str, cfg.input_shape))} needs at least {need / 2**30:.1f} GiB; "
                           f"{device} has {have / 2**30:.1f} GiB: lower --batch-size or --input")


def run_profile(cfg: ProfileConfig, report: Callable[[ProfileRow], None] | None = None) -> list[ProfileRow]:
    """Profile every configuration in turn (calling `report` after each)."""
    rows = []
    for modules, context, segments in configurations(cfg):
        row = profile_one(cfg, modules, context, segments)
        rows.append(row)
        if report is not None:
            report(row)
    return rows


def machine() -> dict[str, Any]:
    """Where the numbers came from: CPU, threads, GPU, torch version, load."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        info["loadavg"] = list(os.getloadavg())
    return info


MIB = 2**20
HEADER = ["arch", "K", "context", "peak MiB", "saved MiB", "state MiB", "bound MiB", "x bound", "step ms", "img/s",
          "params", "ctx params", "GFLOP", "ctx GFLOP", "head GFLOP"]


def table_cells(row: ProfileRow) -> list[str]:
    """One row of the terminal / markdown table."""
    return [
        row.arch, str(row.modules), row.context, f"{row.peak_bytes / MIB:.1f}", f"{row.saved_peak_bytes / MIB:.1f}",
        f"{row.state_bytes / MIB:.1f}", f"{row.bound_bytes / MIB:.1f}",
        f"{(row.peak_bytes + row.state_bytes) / row.bound_bytes:.2f}" if row.peak_bytes else "-",
        f"{row.step_ms:.0f}", f"{row.images_per_s:.0f}",
        f"{row.params['total']:,}", f"{row.params['context']:,}",
        *(f"{row.flops[g] / 1e9:.2f}" if row.flops else "-" for g in ("total", "context", "heads")),
    ]


def format_table(rows: Sequence[ProfileRow], markdown: bool = False) -> str:
    """The rows as an aligned text table, or as a markdown table."""
    cells = [table_cells(r) for r in rows]
    return markdown_table(HEADER, cells) if markdown else text_table(HEADER, cells)


def flat(row: ProfileRow) -> dict[str, Any]:
    """A row as one flat record (nested groups become `params_<group>`, `flops_<group>`)."""
    d = asdict(row)
    out = {k: v for k, v in d.items()
           if k not in ("params", "flops", "cuts", "cut_names", "input_shape", "step_ms_all")}
    out["cuts"] = " ".join(map(str, row.cuts))
    out["cut_names"] = " ".join(row.cut_names)
    out["input_shape"] = "x".join(map(str, row.input_shape))
    out.update({f"params_{k}": v for k, v in row.params.items()})
    out.update({f"flops_{k}": v for k, v in row.flops.items()})
    return out


def plot(rows: Sequence[ProfileRow], path: str | Path, title: str = "") -> None:
    """Peak memory and step time against K, one line per context mode (E2E as a marker at K = 1)."""
    from matplotlib import ticker  # with pyplot: an optional dependency

    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 38, 0.5, 1024: not 3.8x10^1
    for arch in dict.fromkeys(r.arch for r in rows):
        mine = [r for r in rows if r.arch == arch]
        e2e = [r for r in mine if r.context == E2E]
        for context in dict.fromkeys(r.context for r in mine if r.context != E2E):
            line = e2e + sorted((r for r in mine if r.context == context), key=lambda r: r.modules)
            label = f"{arch} {context}" if len({r.arch for r in rows}) > 1 else context
            axes[0].plot([r.modules for r in line], [r.peak_bytes / MIB for r in line], "o-", label=label)
            axes[1].plot([r.modules for r in line], [r.step_ms for r in line], "o-", label=label)
    for ax, ylabel in zip(axes, ["peak step memory (MiB)", "median step time (ms)"], strict=True):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(ticker.FixedLocator(sorted({r.modules for r in rows})))  # the profiled K
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xlabel("K (modules; K = 1 is E2E)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no lines when only E2E was profiled
            ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(plain)
    axes[0].yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
    if title:
        fig.suptitle(title)
    save_figure(fig, path, dpi=110)


def write_outputs(rows: Sequence[ProfileRow], out_dir: str | Path, meta: dict[str, Any]) -> list[Path]:
    """profile.csv, profile.json (rows + machine + config) and profile.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [flat(r) for r in rows]
    csv_path, json_path, png_path = out / "profile.csv", out / "profile.json", out / "profile.png"
    write_csv(records, csv_path)
    json_path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    plot(rows, png_path, title=meta.get("title", ""))
    return [csv_path, json_path, png_path]
