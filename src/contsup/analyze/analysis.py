"""`analyze`: load trained runs, walk their unit boundaries frozen, probe label and input information."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from contsup.analyze.features import CutFeatures, parse_units, walk_boundaries
from contsup.analyze.probes import ProbeConfig, flatten_features, label_entropy, linear_probe, mlp_probe
from contsup.analyze.recon_probe import ReconConfig, decoder_probe
from contsup.data import Dataset, DeviceLoader, Split
from contsup.device import activate, resolve_device
from contsup.errors import ContsupError
from contsup.method.network import LocalNetwork
from contsup.run import RunConfig, load_data, load_run


@dataclass
class AnalyzeConfig:
    """What to analyze and with which fixed budgets."""

    units: str | None = None  # boundaries to probe ("all", "3,7" or "1.2,2.0"); None: the runs' cuts
    train_size: int = 5000  # probe-training examples, drawn from the run's training split
    test_size: int = 2000  # held-out examples, drawn from the test split
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    recon: ReconConfig | None = field(default_factory=ReconConfig)  # None: no decoder
    seed: int = 0
    batch_size: int = 500  # forward-pass slice size
    device: str = "cpu"
    data_dir: str | None = None  # where the runs' dataset is read from (None: the default places); never fetched


@dataclass
class Row:
    """The measurements at one boundary of one run, for one feature (h or h^c)."""

    run: str
    unit: int
    name: str
    feature: str  # "h" or "hc"
    supplied: bool  # context added here (else hc is h)
    dims: int  # probe input size after pooling
    probe_acc: float
    probe_ce: float
    info_lb: float  # H(y) - probe_ce, nats
    probe_train_acc: float
    mlp_acc: float | None = None
    mlp_ce: float | None = None
    recon_mse: float | None = None
    recon_bce: float | None = None
    recon_psnr: float | None = None


@dataclass
class Probed:
    """The data a run is probed with: normalized inputs, pixels in [0, 1], labels; train rows first."""

    x: torch.Tensor
    pixels: torch.Tensor
    y: torch.Tensor
    n_train: int
    classes: int


def run_label(cfg: RunConfig) -> str:
    """A short name for a run: E2E, or its context mode and K."""
    return "E2E" if cfg.local.modules == 1 else f"{cfg.local.context} K={cfg.local.modules}"


def probe_data(data: Dataset, cfg: AnalyzeConfig, device: torch.device) -> Probed:
    """Seeded subsets: `train_size` training images, then `test_size` test images."""
    gen = torch.Generator().manual_seed(cfg.seed)
    parts: list[Split] = []
    for which, split, n in (("training", data.train, cfg.train_size), ("test", data.test, cfg.test_size)):
        if not 0 < n <= len(split):
            raise ContsupError(f"asked for {n} {which} images to probe with; the {which} split has {len(split)}")
        parts.append(split.subset(torch.randperm(len(split), generator=gen)[:n]))
    images = torch.cat([p.images for p in parts])
    loader = DeviceLoader(Split(images, torch.cat([p.labels for p in parts])), data.info, cfg.batch_size, device)
    return Probed(loader.normalize(loader.images), loader.images.float() / 255.0, loader.labels,
                  cfg.train_size, data.info.num_classes)


def default_units(nets: Sequence[LocalNetwork]) -> str:
    """The cuts of the runs with K > 1 (their union), or every boundary when all runs are end-to-end."""
    cuts = sorted({c for net in nets for c in net.cuts})
    return ",".join(map(str, cuts)) if cuts else "all"


def measure(feats: CutFeatures, data: Probed, cfg: AnalyzeConfig, run: str) -> list[Row]:
    """Probe and decode h and (where context is added) h^c at one boundary."""
    rows = []
    n, y = data.n_train, data.y
    for feature, h in (("h", feats.h), ("hc", feats.hc)):
        if feature == "hc" and not feats.supplied:
            rows.append(Row(**{**vars(rows[0]), "feature": "hc"}))
            continue
        seed = cfg.seed * 100_003 + feats.unit * 2 + (feature == "hc")
        flat = flatten_features(h, cfg.probe.pool)
        lin = linear_probe(flat[:n], y[:n], flat[n:], y[n:], data.classes, cfg.probe)
        row = Row(run, feats.unit, feats.name, feature, feats.supplied, flat.shape[1], lin.acc, lin.ce,
                  label_entropy(y[n:], data.classes) - lin.ce, lin.train_acc)
        if cfg.probe.mlp:
            mlp = mlp_probe(flat[:n], y[:n], flat[n:], y[n:], data.classes, cfg.probe, seed)
            row.mlp_acc, row.mlp_ce = mlp.acc, mlp.ce
        if cfg.recon is not None:
            m = min(cfg.recon.train_size, n)
            rec = decoder_probe(h[:m], data.pixels[:m], h[n:], data.pixels[n:], cfg.recon, seed)
            row.recon_mse, row.recon_bce, row.recon_psnr = rec.mse, rec.bce, rec.psnr
        rows.append(row)
    return rows


def analyze_runs(
    checkpoints: Sequence[str | Path], cfg: AnalyzeConfig, labels: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Rows for every run at every chosen unit boundary (network frozen, eval mode, no gradients)."""
    if labels is not None and len(labels) != len(checkpoints):
        raise ContsupError(f"--labels gives {len(labels)} names for {len(checkpoints)} runs")
    device = activate(resolve_device(cfg.device))  # the same flags as training
    runs = [load_run(c, str(device), cfg.data_dir) for c in checkpoints]
    names = list(labels) if labels is not None else _unique([run_label(r[0]) for r in runs], checkpoints)
    nets = [net for _, net, _ in runs]
    if any(net.unit_names != nets[0].unit_names for net in nets):
        raise ContsupError("the runs' networks have different units; analyze runs of the same architecture")
    units = parse_units(cfg.units or default_units(nets), nets[0].unit_names)
    cache: dict[str, Probed] = {}
    rows: list[Row] = []
    for (run_cfg, net, _), name in zip(runs, names, strict=True):
        key = repr((run_cfg.data, run_cfg.train.seed))
        if key not in cache:
            cache[key] = probe_data(load_data(run_cfg), cfg, device)
        data = cache[key]
        start = time.perf_counter()
        for feats in walk_boundaries(net, data.x, units, cfg.batch_size):
            rows += measure(feats, data, cfg, name)
        log(f"{name}: {len(units)} boundaries in {time.perf_counter() - start:.1f} s")
    return rows


def _unique(names: list[str], checkpoints: Sequence[str | Path]) -> list[str]:
    """Run names, with the run folder appended where two runs would share one."""
    return [f"{n} ({Path(c).parent.name if Path(c).suffix else Path(c).name})" if names.count(n) > 1 else n
            for n, c in zip(names, checkpoints, strict=True)]
