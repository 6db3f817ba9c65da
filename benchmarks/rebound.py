"""Recompute the lower bound of every row of stored `contsup profile` results, in place (CSV and JSON).

The bound (`contsup.profile.bound`) depends on the network alone, not on a measured step: when its definition
changes, the stored peaks, states and step times stay valid and only `bound_bytes` is recomputed, from the
command each folder's profile.json records. Prints each row's old and new bound and (peak + state) / bound.

    PYTHONPATH=src python benchmarks/rebound.py docs/results/profile    # every profile.json below it
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from contsup.cli.profile import config_from_args, register
from contsup.profile.bound import lower_bound
from contsup.profile.runner import E2E, build
from contsup.train.optim import STATE_BUFFERS

MIB = 2**20


def rebound(folder: Path) -> None:
    """Recompute `bound_bytes` of every row in folder/profile.json and folder/profile.csv."""
    data = json.loads((folder / "profile.json").read_text())
    cli = argparse.ArgumentParser()
    register(cli.add_subparsers())
    defaults = vars(cli.parse_args(["profile"]))  # for flags added after the folder was written
    cfg = config_from_args(argparse.Namespace(**(defaults | data["meta"]["config"])))
    bounds = {}
    for row in data["rows"]:
        context = E2E if row["modules"] == 1 else row["context"].split(" (")[0]  # "R1E (ckpt 8)": the bound is plain's
        net = build(cfg, row["modules"], context, torch.device("cpu"))
        if list(net.cuts) != row["cuts"]:
            raise SystemExit(f"{folder}: K={row['modules']} {row['context']} now cuts at {net.cuts}, not {row['cuts']}")
        new = lower_bound(net, row["batch_size"], STATE_BUFFERS[cfg.optimizer]).total
        print(f"{folder.name}: K={row['modules']} {row['context']}: bound {row['bound_bytes'] / MIB:.1f} -> "
              f"{new / MIB:.1f} MiB, x bound {(row['peak_bytes'] + row['state_bytes']) / new:.2f}")
        bounds[row["modules"], row["context"]] = row["bound_bytes"] = new
    (folder / "profile.json").write_text(json.dumps(data, indent=2) + "\n")
    with open(folder / "profile.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["bound_bytes"] = str(bounds[int(row["modules"]), row["context"]])
    with open(folder / "profile.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    """Recompute the bounds of every profile.json (and its profile.csv) below the folders named."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders searched for profile.json")
    for top in parser.parse_args().folders:
        for path in sorted(top.rglob("profile.json")):
            rebound(path.parent)


if __name__ == "__main__":
    main()
