"""`contsup data list|fetch`: see which datasets are present, download and verify one."""

from __future__ import annotations

import argparse

from contsup.data import DATASETS, dataset_info
from contsup.data.download import check_data_dir
from contsup.data.sources import fetch, get_spec, incomplete_copies, locate, split_sizes, verify
from contsup.data.synthetic import SyntheticOptions
from contsup.errors import ContsupError


def register(subparsers) -> None:
    """Add the `data` command with its `list` and `fetch` sub-commands."""
    parser = subparsers.add_parser("data", help="list, download and verify datasets")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p_list = sub.add_parser("list", help="show every dataset and where it was found")
    p_list.set_defaults(func=run_list)
    p_fetch = sub.add_parser("fetch", help="download (or verify) one dataset")
    p_fetch.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    p_fetch.add_argument("--dir", default=None, help="dataset folder (default: search path)")
    p_fetch.set_defaults(func=run_fetch)


def _row(name: str) -> list[str]:
    """One table row: name, where, train/test sizes, shape, classes."""
    info = dataset_info(name)
    shape = f"{info.channels}x{info.size}x{info.size}"
    if name == "synthetic":
        opts = SyntheticOptions()
        return [name, "generated", f"{opts.train}/{opts.test}", shape, str(info.num_classes)]
    spec = get_spec(name)
    folder = locate(name)
    if folder is None:
        where, sizes = "not found", f"{spec.train_size}/{spec.test_size}"
    else:
        try:
            tr, te = split_sizes(name, folder)
            where, sizes = str(folder), f"{tr}/{te}"
        except ContsupError as err:
            where, sizes = f"{folder} (unreadable: {err})", "?"
    for partial, missing in incomplete_copies(name):
        where += f"; incomplete copy in {partial} (missing {', '.join(missing)}) skipped"
    return [name, where, sizes, shape, str(info.num_classes)]


def run_list(args: argparse.Namespace) -> int:
    """Print the dataset table."""
    rows = [["name", "location", "train/test", "shape", "classes"]]
    rows += [_row(name) for name in DATASETS]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """Download and verify `args.name`, or verify the copy already present."""
    if args.name == "synthetic":
        print("synthetic: generated on the fly, nothing to fetch")
        return 0
    get_spec(args.name)  # unknown name -> ContsupError
    check_data_dir(args.dir)
    existing = locate(args.name, args.dir)
    folder = existing if existing is not None else fetch(args.name, args.dir)
    notes = verify(args.name, folder) if existing is not None else ["downloaded, md5 verified"]
    for note in notes:
        print(f"  {note}")
    print(f"{args.name}: {folder}")
    return 0
