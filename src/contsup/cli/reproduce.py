"""`contsup reproduce`: the paper's experiments as presets, run as resumable sweeps and collected."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from contsup.data import dataset_info
from contsup.data.download import check_data_dir
from contsup.data.sources import presence
from contsup.device import resolve_device
from contsup.errors import ContsupError
from contsup.files import check_out_dir
from contsup.reproduce.collect import collect
from contsup.reproduce.presets import Preset, available_presets, jobs, load_preset, parse_only
from contsup.reproduce.sweep import job_state, run_sweep
from contsup.run import build_network


def cmd_list() -> int:
    """Print every shipped preset with its title and recipes."""
    for name in available_presets():
        p = load_preset(name)
        print(f"{name:16s} {p.title}  [recipes: {', '.join(p.recipes)}]")
    return 0


def recipe_text(preset: Preset, recipe: str) -> str:
    """The recipe's settings (over the preset's base and grid) on one line, dataset-specific ones after."""
    table = preset.recipes[recipe]
    text = ", ".join(f"{k} = {v}" for k, v in table.items() if k != "per_dataset")
    for ds, over in table.get("per_dataset", {}).items():
        text += f"; on {ds}: " + ", ".join(f"{k} = {v}" for k, v in over.items())
    return f"recipe {recipe}: {text}"


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run (or dry-run, or collect) one preset's sweep."""
    if args.list:
        return cmd_list()
    if not args.preset:
        raise ContsupError("name a preset (see `contsup reproduce --list`)")
    out = check_out_dir(args.out if args.out is not None else f"runs/reproduce/{args.recipe}", "--out")
    results = check_out_dir(args.results if args.results is not None else Path(out) / "results", "--results")
    check_data_dir(args.data_dir)
    preset = load_preset(args.preset)
    overrides = {k: v for k, v in (("device", args.device), ("data_root", args.data_dir)) if v is not None}
    todo = jobs(preset, args.recipe, out, args.seeds, parse_only(args.only), overrides, progress=args.progress)
    if not todo:
        raise ContsupError("no configuration left after --only")
    stem = f"{preset.name}-{args.recipe}"
    if args.dry_run:
        devices = {name: resolve_device(name) for name in {job.config.train.device for job in todo}}  # or refused
        print(f"{preset.title} ({len(todo)} configurations, recipe {args.recipe}, folder {out})")
        print(recipe_text(preset, args.recipe))
        print("device: " + ", ".join(f"{name} -> {dev}" for name, dev in sorted(devices.items())))
        for d in {(job.config.data.name, job.config.data.root, job.config.data.download): None for job in todo}:
            print(f"data: {presence(*d)}")
        for job in todo:
            info = dataset_info(job.config.data.name)
            net = build_network(job.config, info.channels, info.num_classes, info.size)
            counts = net.param_counts()
            print(f"  {job.name:48s} {job_state(job):7s} params {counts['total']:,} (context {counts['context']:,})")
        return 0
    failed = 0
    if not args.collect:
        print(f"{preset.title}: {len(todo)} configurations, recipe {args.recipe}, folder {out}")
        report = run_sweep(todo, isolate=not args.in_process, workers=args.workers)
        failed = len(report.failed)
        print(f"done earlier {len(report.done)}, trained {len(report.trained)}, resumed {len(report.resumed)}, "
              f"failed {failed}")
    result = collect(todo, results, stem, preset.title)
    print(json.dumps(result, indent=2))
    print(Path(result["markdown"]).read_text())
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `reproduce` to the command line."""
    p = sub.add_parser(
        "reproduce", help="run one of the paper's experiments (a preset) as a resumable sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Run a preset's grid of configurations, one run folder each under --out; finished runs are
            skipped and interrupted ones resumed, so rerunning the same command continues a killed sweep.
            Results (CSV, markdown table, plots) go to <out>/results/<preset>-<recipe>.* (or --results).
            Example: contsup reproduce table1 --recipe cpu --out runs/results"""),
    )
    p.add_argument("preset", nargs="?", help="preset name (see --list) or a path to a preset .toml file")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("--recipe", default="cpu",
                   help="cpu (short, Fashion-MNIST) or paper (docs/method.md, training recipe); default cpu")
    p.add_argument("--out", default=None, help="sweep folder (default runs/reproduce/<recipe>)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds to run (default: the preset's)")
    p.add_argument("--only", action="append", metavar="KEY=VALUE[,VALUE]",
                   help="keep configurations whose setting KEY is one of the values; repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="print the recipe, check the device and the dataset's presence, "
                        "list the configurations, build each network, exit")
    p.add_argument("--collect", action="store_true", help="only gather finished runs into CSV, table and plots")
    p.add_argument("--results", default=None, help="where collect writes its files (default <out>/results)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the preset's, auto)")
    p.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    p.add_argument("--progress", action="store_true", help="show a progress bar per epoch")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at a time, each its own process (set OMP_NUM_THREADS to share the cores); default 1")
    p.add_argument("--in-process", action="store_true",
                   help="train in this process (faster start; peak memory then accumulates across runs)")
    p.set_defaults(func=cmd_reproduce)
