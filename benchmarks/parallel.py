"""Parallel training: one table and one figure from the run folders of `contsup reproduce parallel`.

For every way of training (backbone, K, context and head, how the work is split, processes x threads),
over its seeds: images/s of training, each rank's peak memory (resident set: runtime and dataset included)
and idle fraction (1 - busy CPU / wall clock, one thread a rank, start-up included), the final validation
and test errors, and time-to-accuracy: the training wall time (evaluation left out) until the validation
error first reaches each target, read at the end of every epoch; a way that never reaches a target shows
how many of its seeds did. The figure plots the validation error against training wall time.

    contsup reproduce parallel --out runs/parallel            # the sweep (hours, on a quiet machine)
    PYTHONPATH=src python benchmarks/parallel.py --sweep runs/parallel   # table + figure into docs/parallel.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from docregion import write_region

DOC = Path(__file__).resolve().parents[1] / "docs" / "parallel.md"
TARGETS = "15,12,10"  # validation errors (%) whose time-to-accuracy the table reports


def read_run(folder: Path) -> dict[str, Any] | None:
    """One finished run: its settings, epochs (cumulative training seconds, validation error) and rank usage."""
    summary_path, metrics_path = folder / "summary.json", folder / "metrics.jsonl"
    if not (summary_path.is_file() and metrics_path.is_file()):
        return None
    summary = json.loads(summary_path.read_text())
    run = summary["meta"]["run"]
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    clock, curve = 0.0, []
    for row in rows:
        clock += row["epoch_time"]
        if "val_error" in row:
            curve.append((clock, row["val_error"]))
    ranks_path = folder / "ranks.json"
    ranks = json.loads(ranks_path.read_text()) if ranks_path.is_file() else None
    return {"way": way(run), "seed": run["train"]["seed"], "summary": summary, "curve": curve, "ranks": ranks}


def way(run: dict[str, Any]) -> str:
    """The row a run belongs to: backbone, method, split of the work, processes x threads."""
    local, pipe = run["local"], run["pipeline"]
    method = "E2E" if local["modules"] == 1 else f"K={local['modules']} {local['context']}" + (
        f" {local['head']}" if local["head"] != "1c2f" else "")
    split = pipe["parallel"] + (f" M={pipe['micro_batches']}" if pipe["parallel"] not in ("local", "ddp") else "")
    threads = pipe["threads"] or "default"
    return f"{run['arch']} | {method} | {split} | {pipe['ranks']} x {threads}"


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Training seconds until the validation error first reaches `target` (None: never)."""
    return next((t for t, err in curve if err <= target), None)


def mean_sd(values: list[float], fmt: str = "{:.1f}") -> str:
    """`mean ± sd` over seeds (just the value for one seed; a dash for none)."""
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(runs: list[dict[str, Any]], targets: list[float]) -> str:
    """The markdown table: one row a way, means ± sd over its seeds."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[r["way"]].append(r)
    head = ("| backbone | method | split | processes x threads | seeds | images/s | peak memory per rank (MiB) "
            "| idle per rank | val error (%) | test error (%) | "
            + " | ".join(f"time to {t:g} % (s)" for t in targets) + " |")
    lines = [head, "|" + "---|" * (10 + len(targets))]
    for name, group in sorted(groups.items()):
        speed = [r["summary"]["images_per_s"] for r in group]
        with_ranks = [r["ranks"] for r in group if r["ranks"]]
        if with_ranks:
            n = len(with_ranks[0])
            peak = " / ".join(mean_sd([rk[i]["peak_rss_bytes"] / 2**20 for rk in with_ranks], "{:.0f}")
                              for i in range(n))
            idle = " / ".join(mean_sd([1 - rk[i]["busy_s"] / rk[i]["wall_s"] for rk in with_ranks], "{:.2f}")
                              for i in range(n))
        else:
            peak = mean_sd([r["summary"]["peak_memory_bytes"] / 2**20 for r in group], "{:.0f}")
            idle = "—"
        val = mean_sd([r["summary"]["final_val_error"] for r in group if "final_val_error" in r["summary"]], "{:.2f}")
        test = mean_sd([r["summary"]["final_test_error"] for r in group], "{:.2f}")
        tta = []
        for t in targets:
            reached = [s for s in (time_to(r["curve"], t) for r in group) if s is not None]
            cell = mean_sd(reached, "{:.1f}")
            tta.append(cell if len(reached) == len(group) else f"{cell} ({len(reached)}/{len(group)} seeds)")
        lines.append(f"| {name} | {len(group)} | {mean_sd(speed)} | {peak} | {idle} | {val} | {test} | "
                     + " | ".join(tta) + " |")
    return "\n".join(lines)


def figure(runs: list[dict[str, Any]], path: Path) -> None:
    """Validation error against training wall time, one line a run, one colour a way, one panel a backbone."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arches = sorted({r["way"].split(" | ")[0] for r in runs})
    ways = sorted({r["way"] for r in runs})
    colours = {w: plt.get_cmap("tab20")(i % 20) for i, w in enumerate(ways)}
    fig, axes = plt.subplots(1, len(arches), figsize=(6.5 * len(arches), 4.5), squeeze=False)
    for ax, arch in zip(axes[0], arches, strict=True):
        shown: set[str] = set()
        for r in runs:
            if not r["way"].startswith(arch + " ") or not r["curve"]:
                continue
            t, err = zip(*r["curve"], strict=True)
            label = r["way"].split(" | ", 1)[1] if r["way"] not in shown else None
            shown.add(r["way"])
            ax.plot(t, err, marker="o", ms=3, color=colours[r["way"]], label=label, alpha=0.8)
        ax.set(title=arch, xlabel="training wall time (s)", ylabel="validation error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Read the sweep's run folders, print the table, write it and the figure (into docs/ unless --out)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", required=True, help="the folder `contsup reproduce parallel --out` wrote")
    p.add_argument("--out", default=None, help="write parallel.md and parallel.png here instead of docs/")
    p.add_argument("--targets", default=TARGETS, help=f"validation errors (%%) to time (default {TARGETS})")
    args = p.parse_args()
    runs = [r for f in sorted(Path(args.sweep).iterdir()) if f.is_dir() and (r := read_run(f)) is not None]
    if not runs:
        raise SystemExit(f"no finished runs in {args.sweep}")
    doc = Path(args.out) / "parallel.md" if args.out else DOC
    png = doc.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = "\n".join([
        f"Measured by `PYTHONPATH=src python benchmarks/parallel.py --sweep {args.sweep}` from "
        f"`contsup reproduce parallel`; {len(runs)} runs, load average when tabulated {load} (the runs' own loads "
        "are in the sweep's log).",
        "",
        table(runs, [float(t) for t in args.targets.split(",")]),
        "",
        f"![validation error against training wall time]({png.name})",
    ])
    print(text)
    figure(runs, png)
    write_region(doc, "parallel-measured", text, title="# Parallel training")


if __name__ == "__main__":
    main()
