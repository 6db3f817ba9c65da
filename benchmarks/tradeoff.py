"""Final test error against step memory, with step time, for every way to train ResNet-32 on the protocol budget.

Reads what is committed under docs/results/: the collected sweeps (`contsup reproduce ... --collect`:
protocol-cpu.csv, heads-cpu.csv, budget-cpu.csv, budget-cpu-b32.csv) for the errors, and the profile runs of
`benchmarks/heads_and_budget_profile.sh` (docs/results/profile/<name>/profile.csv, one quiet run each, E2E in
every one) for step peak memory and step time; step times are given as a ratio to E2E's in the same profile
run. Writes docs/results/tradeoff.md (the table) and docs/results/tradeoff.png (the figure):

    python benchmarks/tradeoff.py docs/results

A method whose runs have not all finished is shown with the seeds it has.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

from contsup.tables import markdown_table, pyplot, save_figure


@dataclass(frozen=True)
class Method:
    """One point: where its errors and its profile row are."""

    label: str
    sweep: str  # collected CSV (stem under docs/results)
    match: dict[str, str]  # columns of that CSV the runs must have
    profile: str  # profile folder under docs/results/profile
    row: tuple[str, str]  # (K, context) of the profile row
    reference: str = ""  # profile folder of the E2E batch-128 row its time is compared with (default: its own)


PLAIN_HEAD = {"head_patches": "1", "man_momentum": "0.0"}
METHODS = [
    Method("E2E, batch 128", "protocol-cpu", {"modules": "1"}, "head-1c2f", ("1", "E2E")),
    Method("E2E, batch 32", "budget-cpu-b32", {"modules": "1"}, "batch-32", ("1", "E2E"), reference="head-1c2f"),
    Method("E2E, 16 checkpointed segments", "budget-cpu", {"modules": "1"}, "e2e-checkpointed",
           ("1", "E2E (ckpt 16)")),
    Method("R0 K=16", "protocol-cpu", {"modules": "16", "context": "R0", "recon": "none"}, "head-1c2f", ("16", "R0")),
    Method("R1E K=16", "protocol-cpu", {"modules": "16", "context": "R1E"}, "head-1c2f", ("16", "R1E")),
    Method("R0 K=16 AugLocal", "heads-cpu", {"context": "R0", "head": "auglocal", **PLAIN_HEAD}, "head-auglocal",
           ("16", "R0")),
    Method("R1E K=16 AugLocal", "heads-cpu", {"context": "R1E", "head": "auglocal", **PLAIN_HEAD}, "head-auglocal",
           ("16", "R1E")),
    Method("E K=16 AugLocal", "heads-cpu", {"context": "E", "head": "auglocal", **PLAIN_HEAD}, "head-auglocal-e",
           ("16", "E")),
    Method("R0 K=16 MAN", "heads-cpu", {"context": "R0", "head": "1c2f", "man_momentum": "0.995"}, "head-man",
           ("16", "R0")),
    Method("R1E K=16 MAN", "heads-cpu", {"context": "R1E", "head": "1c2f", "man_momentum": "0.995"}, "head-man",
           ("16", "R1E")),
    Method("R0 K=16 PFF 2x2", "heads-cpu", {"context": "R0", "head": "1c2f", "head_patches": "2"}, "head-pff2",
           ("16", "R0")),
    Method("R1E K=16 PFF 2x2", "heads-cpu", {"context": "R1E", "head": "1c2f", "head_patches": "2"}, "head-pff2",
           ("16", "R1E")),
    Method("R0 K=16 AugLocal + MAN", "heads-cpu", {"context": "R0", "head": "auglocal", "man_momentum": "0.995"},
           "head-pair", ("16", "R0")),
    Method("R1E K=16 AugLocal + MAN", "heads-cpu", {"context": "R1E", "head": "auglocal", "man_momentum": "0.995"},
           "head-pair", ("16", "R1E")),
]


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file (none when it does not exist yet)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mean_std(values: list[float]) -> str:
    """`m ± s (n)` over seeds (one seed: its value)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def main() -> None:
    """Table and figure from the committed results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="docs/results")
    args = parser.parse_args()
    rows, points = [], []
    for m in METHODS:
        runs = [r for r in read_csv(args.results / f"{m.sweep}.csv")
                if all(r.get(k, "") == v for k, v in m.match.items())]
        test = [float(r["final_test_error"]) for r in runs]
        val = [float(r["final_val_error"]) for r in runs]
        prof = read_csv(args.results / "profile" / m.profile / "profile.csv")
        ref = read_csv(args.results / "profile" / (m.reference or m.profile) / "profile.csv")
        mine = [p for p in prof if (p["modules"], p["context"]) == m.row]
        e2e = [p for p in ref if (p["modules"], p["context"]) == ("1", "E2E")]
        peak = float(mine[0]["peak_bytes"]) / 2**20 if mine else float("nan")
        # time per image against E2E's at batch 128 (a smaller batch takes more steps for the same images)
        ratio = float(e2e[0]["images_per_s"]) / float(mine[0]["images_per_s"]) if mine and e2e else float("nan")
        rows.append([m.label, mean_std(test), mean_std(val), f"{peak:.1f}", f"{ratio:.2f}"])
        if test and mine:
            points.append((m.label, statistics.mean(test), peak, ratio))
    header = ["method", "final test error % (seeds)", "final val error % (seeds)", "step peak MiB",
              "time per image / E2E's"]
    (args.results / "tradeoff.md").write_text(markdown_table(header, rows) + "\n")
    fig, ax = pyplot().subplots(figsize=(8, 5))
    for label, err, peak, ratio in points:
        ax.scatter(peak, err)
        ax.annotate(f"{label}\n{ratio:.2f}x time", (peak, err), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("step peak memory, MiB (batch 128 unless said; 1x28x28)")
    ax.set_ylabel("final test error %, mean over seeds")
    ax.set_title("ResNet-32 on Fashion-MNIST, protocol budget: error against memory (step time vs E2E)")
    ax.grid(alpha=0.3)
    save_figure(fig, args.results / "tradeoff.png", dpi=110)
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
