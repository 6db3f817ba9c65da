"""`contsup analyze`: label probes and input decoders at every cut of trained runs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from contsup.analyze import AnalyzeConfig, ProbeConfig, ReconConfig, analyze_runs, format_table, plot, write_csv
from contsup.checks import MAX_SEED, check_int
from contsup.data.download import check_data_dir
from contsup.errors import ContsupError
from contsup.files import check_out_dir
from contsup.models.reference import allow


def config_from_args(args: argparse.Namespace) -> AnalyzeConfig:
    """An AnalyzeConfig from parsed `analyze` flags."""
    for name in ("train_size", "test_size", "probe_steps", "recon_steps", "batch_size"):
        if getattr(args, name) <= 0:
            raise ContsupError(f"--{name.replace('_', '-')} must be positive")
    if args.pool < 0 or not 0 <= args.probe_wd < math.inf:
        raise ContsupError("--pool must be >= 0, --probe-wd a finite number >= 0")
    check_int("seed", args.seed, 0, MAX_SEED)
    check_data_dir(args.data_dir)
    probe = ProbeConfig(pool=args.pool, linear_steps=args.probe_steps, weight_decay=args.probe_wd, mlp=args.mlp)
    recon = None if args.no_recon else ReconConfig(train_size=min(args.recon_size, args.train_size),
                                                   steps=args.recon_steps)
    return AnalyzeConfig(units=args.units, train_size=args.train_size, test_size=args.test_size, probe=probe,
                         recon=recon, seed=args.seed, batch_size=args.batch_size, device=args.device,
                         data_dir=args.data_dir)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Probe every run at the chosen boundaries; print the table, write CSV and plot."""
    check_out_dir(args.out, "--out")
    out = Path(args.out)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if args.arch is not None:
        allow(args.arch)  # the runs' model is the user's code, named: it may be imported
    rows = analyze_runs(args.runs, config_from_args(args), labels)
    write_csv(rows, out / "analysis.csv")
    plot(rows, out / "analysis.png", args.title)
    print(format_table(rows))
    print(f"wrote {out / 'analysis.csv'} and {out / 'analysis.png'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `analyze` to the command line."""
    p = sub.add_parser("analyze", help="label probes and input decoders at every cut of trained runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="checkpoint.pt files or run folders")
    p.add_argument("--units", default=None,
                   help="unit boundaries to probe: 'all', indices '3,7' or stage.block '1.2,2.0' "
                        "(default: the cuts of the K>1 runs given, or all for end-to-end runs)")
    p.add_argument("--arch", default=None, metavar="PACKAGE.MODULE:FUNCTION",
                   help="the model code the runs were trained on, when it is your own (imported only if named)")
    p.add_argument("--labels", default=None, help="comma-separated names of the runs (default: context and K)")
    p.add_argument("--train-size", type=int, default=5000, help="probe-training images (from the training split)")
    p.add_argument("--test-size", type=int, default=2000, help="held-out images (from the test split)")
    p.add_argument("--pool", type=int, default=4,
                   help="average-pool features to POOL x POOL before the probes (0: no pooling)")
    p.add_argument("--probe-steps", type=int, default=100, help="L-BFGS iterations of the linear probe")
    p.add_argument("--probe-wd", type=float, default=1e-3, help="L2 penalty of the probes")
    p.add_argument("--mlp", action="store_true", help="also train a one-hidden-layer MLP probe")
    p.add_argument("--recon-size", type=int, default=2000, help="images the decoder trains on")
    p.add_argument("--recon-steps", type=int, default=200, help="Adam steps of the decoder")
    p.add_argument("--no-recon", action="store_true", help="skip the reconstruction decoder")
    p.add_argument("--seed", type=int, default=0, help="seed of the image samples and the probes")
    p.add_argument("--batch-size", type=int, default=500, help="forward-pass slice size")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-dir", default=None,
                   help="directory holding the runs' dataset (default: the usual places; never downloaded)")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--out", default="runs/analyze", help="folder for analysis.csv and analysis.png")
    p.set_defaults(func=cmd_analyze)
