"""`contsup runs`: a table of finished (or running) run folders, and plots of their curves."""

from __future__ import annotations

import argparse

from contsup.files import check_out_dir
from contsup.reproduce.compare import find_runs, format_runs, read_run, result_rows, varying_settings, write_report


def cmd_runs(args: argparse.Namespace) -> int:
    """Print the runs' table; with --out also write CSV, markdown and the two plots."""
    check_out_dir(args.out, "--out")
    records = [read_run(folder) for folder in find_runs(args.runs)]
    print(format_runs(result_rows(records), varying_settings(records)))
    if args.out:
        for path in write_report(records, args.out, args.title).values():
            print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `runs` to the command line."""
    p = sub.add_parser(
        "runs", help="compare run folders: errors, memory, time, differing settings; plot their curves",
        description="Summarise run folders (each holds summary.json and metrics.jsonl) as one table. "
                    "With --out, also write runs.csv, runs.md, curves.png (test error and each module's loss "
                    "against epoch) and error-vs-memory.png.",
        epilog="example: contsup runs runs/demo --out runs/demo/report   (a folder of run folders counts as "
               "all of them)",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, files inside them, or folders of run folders")
    p.add_argument("--out", default=None, help="folder for runs.csv, runs.md, curves.png and error-vs-memory.png")
    p.add_argument("--title", default="", help="title of the markdown table and the memory plot")
    p.set_defaults(func=cmd_runs)
