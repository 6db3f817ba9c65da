"""Parallel training: time-to-accuracy of every way of training, composed from accuracy curves and a quiet clock.

Every way of splitting training over ranks computes what one process computes (docs/parallel.md, "How the
time-to-accuracy is composed"; tests/distributed): so a way's validation error after each epoch comes from
one-process runs of the same computation (`contsup reproduce parallel`; they may run under any load), and its
training seconds per epoch from a short run of the way itself on a quiet machine (`contsup reproduce
parallel_throughput`: 2 epochs, the first holding the start-up costs). The time at the end of epoch e is
first + (e - 1) * later, with `first` the way's measured first epoch and `later` the mean of its later ones;
the time to a validation error is that time at the first epoch whose error reaches it, per seed of the curve.

    contsup reproduce parallel --out runs/parallel                          # the curves (any load)
    bash benchmarks/parallel_throughput.sh runs/parallel-throughput         # the clock (quiet machine)
    PYTHONPATH=src python benchmarks/parallel.py --curves runs/parallel --throughput runs/parallel-throughput \
        [--check runs/parallel-check/<run>]   # table + figure into docs/parallel.md; --check: composed vs measured
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

from docregion import write_region

DOC = Path(__file__).resolve().parents[1] / "docs" / "parallel.md"
# validation errors (%) whose time-to-accuracy the tables report, per backbone (a plain list: every backbone)
TARGETS = "resnet32=30,20,15;vit-mini-p7=55,45,35"
SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbv")  # torch's pipeline schedules: micro-batches
# Settings that place the work or set its length, not what a step computes: left out when runs are matched.
PLACEMENT = {"pipeline": ("ranks", "threads", "parallel", "micro_batches", "stage_units", "stage_sizes", "inflight",
                          "replicas", "timeout_s", "backend"),
             "train": ("seed", "epochs", "eval_every", "eval_subset", "step_peak", "progress", "tensorboard", "device"),
             "data": ("root", "download")}


def read_run(folder: Path) -> dict[str, Any] | None:
    """One finished run: its settings, summary, metrics rows and (on ranks) each rank's usage."""
    summary_path, metrics_path = folder / "summary.json", folder / "metrics.jsonl"
    if not (summary_path.is_file() and metrics_path.is_file()):
        return None
    summary = json.loads(summary_path.read_text())
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    ranks_path = folder / "ranks.json"
    ranks = json.loads(ranks_path.read_text()) if ranks_path.is_file() else None
    return {"folder": folder, "run": summary["meta"]["run"], "summary": summary, "rows": rows, "ranks": ranks}


def read_runs(folder: Path) -> list[dict[str, Any]]:
    """Every finished run in a sweep folder, by folder name."""
    return [r for f in sorted(folder.iterdir()) if f.is_dir() and (r := read_run(f)) is not None]


def way(run: dict[str, Any]) -> str:
    """The row a run belongs to: backbone, method, split of the work, processes x threads."""
    local, pipe = run["local"], run["pipeline"]
    method = "E2E" if local["modules"] == 1 else f"K={local['modules']} {local['context']}" + (
        f" {local['head']}" if local["head"] != "1c2f" else "") + (f" cut {local['cuts']}" if local["cuts"] else "")
    split = pipe["parallel"] + (f" M={pipe['micro_batches']}" if pipe["parallel"] in SCHEDULES else "")
    threads = pipe["threads"] or "default"
    return f"{run['arch']} | {method} | {split} | {pipe['ranks']} x {threads}"


@cache
def has_batchnorm(run_json: str) -> bool:
    """Whether the run's network holds a BatchNorm layer (built from its settings, on the CPU)."""
    from torch import nn

    from contsup.config import RunConfig
    from contsup.data import dataset_info
    from contsup.run import build_network

    cfg = RunConfig.from_dict(json.loads(run_json))
    info = dataset_info(cfg.data.name)
    net = build_network(cfg, info.channels, info.num_classes, info.size)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def computation(run: dict[str, Any]) -> str:
    """What a run's steps compute, whatever the ranks, threads or epochs: its settings without placement, and
    the micro-batches whose own BatchNorm statistics a pipeline schedule uses (1 for every other way: the local
    pipeline computes one local process, DDP one end-to-end process; docs/parallel.md)."""
    kept = {part: ({k: v for k, v in value.items() if k not in PLACEMENT.get(part, ())} if isinstance(value, dict)
                   else value) for part, value in run.items() if part != "out"}
    pipe = run["pipeline"]
    schedule = pipe["parallel"] in SCHEDULES and pipe["micro_batches"] > 1
    kept["micro_batches"] = pipe["micro_batches"] if schedule and has_batchnorm(json.dumps(run, sort_keys=True)) else 1
    return json.dumps(kept, sort_keys=True)


def clock(thr: dict[str, Any]) -> tuple[float, float]:
    """(first epoch's training seconds, mean of the later epochs') of a throughput run (the first alone: both)."""
    times = [row["epoch_time"] for row in thr["rows"]]
    return times[0], statistics.mean(times[1:]) if len(times) > 1 else times[0]


def composed(curve: dict[str, Any], first: float, later: float) -> list[tuple[float, float]]:
    """A curve run's (training seconds at the end of epoch e, validation error) on a way's clock:
    first + (e - 1) * later, for every epoch evaluated on the validation set."""
    return [(first + (row["epoch"] - 1) * later, row["val_error"]) for row in curve["rows"] if "val_error" in row]


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


def ways(curves: list[dict[str, Any]], throughput: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each throughput run with its clock, the curve runs of its computation (one a seed) and their composed
    curves, sorted by way."""
    by_computation: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in curves:
        by_computation[computation(c["run"])].append(c)
    out = []
    for thr in throughput:
        first, later = clock(thr)
        matched = sorted(by_computation.get(computation(thr["run"]), []), key=lambda c: c["run"]["train"]["seed"])
        out.append({"way": way(thr["run"]), "thr": thr, "first": first, "later": later, "curves": matched,
                    "composed": [composed(c, first, later) for c in matched]})
    return sorted(out, key=lambda w: w["way"])


def usage(thr: dict[str, Any]) -> tuple[str, str, str]:
    """(step peak per rank, process peak per rank, both in MiB; idle share per rank) of a throughput run; one
    process: its step peak and process peak, no idle. A dash where the step peak was not measured."""
    ranks, summary = thr["ranks"], thr["summary"]
    if not ranks:
        step = summary.get("step_peak_memory_bytes")
        return ("—" if step is None else f"{step / 2**20:.1f}", f"{summary['peak_memory_bytes'] / 2**20:.0f}", "—")
    return (" / ".join("—" if "step_peak_bytes" not in r else f"{r['step_peak_bytes'] / 2**20:.1f}" for r in ranks),
            " / ".join(f"{r['peak_rss_bytes'] / 2**20:.0f}" for r in ranks),
            " / ".join(f"{1 - r['busy_s'] / r['wall_s']:.2f}" for r in ranks))


def rate_of_1f1b(rows: list[dict[str, Any]], arch: str) -> float | None:
    """images/s of the backbone's 1F1B on 2 ranks x 1 thread (the issue's reference); None: not timed."""
    rates = [w["thr"]["summary"]["images_per_s"] for w in rows
             if w["way"].startswith(f"{arch} | E2E | 1f1b ") and w["way"].endswith(" | 2 x 1")]
    if len(rates) > 1:
        raise SystemExit(f"{arch}: {len(rates)} 1F1B runs on 2 x 1 (several micro-batch counts?): no one reference")
    return rates[0] if rates else None


def table(rows: list[dict[str, Any]], targets: list[float]) -> str:
    """The markdown table: one row a way; errors and times to them over the seeds of its curve."""
    head = ("| backbone | method | split | processes x threads | images/s | / 1F1B | s / epoch, first / later "
            "| step peak per rank (MiB) | process peak per rank (MiB) | idle per rank | curve seeds | val error (%) "
            "| test error (%) | " + " | ".join(f"time to {t:g} % (s)" for t in targets) + " |")
    lines = [head, "|" + "---|" * (13 + len(targets))]
    refs = {arch: rate_of_1f1b(rows, arch) for arch in dict.fromkeys(w["way"].split(" | ")[0] for w in rows)}
    for w in rows:
        step, peak, idle = usage(w["thr"])
        curves = w["curves"]
        val = mean_sd([c["rows"][-1]["val_error"] for c in curves if "val_error" in c["rows"][-1]], "{:.2f}")
        test = mean_sd([c["summary"]["final_test_error"] for c in curves], "{:.2f}")
        tta = []
        for t in targets:
            reached = [s for s in (time_to(c, t) for c in w["composed"]) if s is not None]
            cell = mean_sd(reached, "{:.1f}")
            tta.append(cell if len(reached) == len(curves) else f"{cell} ({len(reached)}/{len(curves)} seeds)")
        rate, ref = w["thr"]["summary"]["images_per_s"], refs[w["way"].split(" | ")[0]]
        lines.append(f"| {w['way']} | {rate:.1f} | {'—' if ref is None else f'{rate / ref:.2f}'} "
                     f"| {w['first']:.1f} / {w['later']:.1f} "
                     f"| {step} | {peak} | {idle} | {len(curves)} | {val} | {test} | " + " | ".join(tta) + " |")
    return "\n".join(lines)


def check(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """Real runs of a way against its composed clock and curve: per epoch, the measured and composed training
    seconds and the measured and curve validation errors (the curve run of the same seed)."""
    lines = ["| way | seed | epoch | measured s | composed s | measured / composed | measured val error (%) "
             "| curve val error (%) |", "|---|---|---|---|---|---|---|---|"]
    by_way = {w["way"]: w for w in rows}
    for real in runs:
        name, seed = way(real["run"]), real["run"]["train"]["seed"]
        w = by_way.get(name)
        if w is None:
            raise SystemExit(f"{real['folder']}: no throughput run of its way ({name})")
        curve = next((c for c in w["curves"] if c["run"]["train"]["seed"] == seed), None)
        want = {row["epoch"]: row.get("val_error") for row in curve["rows"]} if curve else {}
        clock_s = 0.0
        for row in real["rows"]:
            clock_s += row["epoch_time"]
            model = w["first"] + (row["epoch"] - 1) * w["later"]
            got, ref = row.get("val_error"), want.get(row["epoch"])
            lines.append(f"| {name} | {seed} | {row['epoch']} | {clock_s:.1f} | {model:.1f} | {clock_s / model:.3f} | "
                         f"{'—' if got is None else f'{got:.2f}'} | {'—' if ref is None else f'{ref:.2f}'} |")
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Validation error (mean over the curve's seeds) against composed training wall time, one line a way,
    one panel a backbone."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arches = sorted({w["way"].split(" | ")[0] for w in rows})
    fig, axes = plt.subplots(1, len(arches), figsize=(7 * len(arches), 5), squeeze=False)
    for ax, arch in zip(axes[0], arches, strict=True):
        mine = [w for w in rows if w["way"].startswith(arch + " ") and w["composed"]]
        for i, w in enumerate(mine):
            epochs = min(len(c) for c in w["composed"])
            t = [w["composed"][0][e][0] for e in range(epochs)]
            err = [statistics.mean(c[e][1] for c in w["composed"]) for e in range(epochs)]
            style = "-" if " 2 x " in w["way"] else "--"
            ax.plot(t, err, style, marker="o", ms=3, color=plt.get_cmap("tab20")(i % 20),
                    label=w["way"].split(" | ", 1)[1])
        ax.set(title=arch, xlabel="training wall time (s, composed)", ylabel="validation error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_targets(text: str) -> dict[str, list[float]]:
    """`arch=e1,e2;arch=...` (or one plain list, key "": every backbone) -> validation errors to time, by backbone."""
    out: dict[str, list[float]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        arch, _, errors = (x.strip() for x in part.rpartition("="))
        try:
            values = [float(e) for e in errors.split(",")]  # float("") raises too: no empty entry
        except ValueError:
            values = []
        if not values or arch in out:
            raise SystemExit(f"--targets: cannot read {part!r} (arch=e1,e2,... once a backbone, or one list)")
        out[arch] = values
    return out


def tables(rows: list[dict[str, Any]], targets: dict[str, list[float]]) -> str:
    """One table a backbone, each with its own targets (those of "" where the backbone has none)."""
    arches = sorted({w["way"].split(" | ")[0] for w in rows})
    missing = [a for a in arches if a not in targets and "" not in targets]
    if missing:
        raise SystemExit(f"--targets names no validation errors for {', '.join(missing)}")
    return "\n\n".join(table([w for w in rows if w["way"].split(" | ")[0] == a], targets.get(a, targets.get("")))
                        for a in arches)


def main() -> None:
    """Compose, print the table (and the check), write them and the figure (into docs/ unless --out)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curves", required=True, help="the folder `contsup reproduce parallel --out` wrote")
    p.add_argument("--throughput", required=True, help="the folder `contsup reproduce parallel_throughput` wrote")
    p.add_argument("--check", nargs="*", default=[], help="run folders of real, quiet runs of a way to compare")
    p.add_argument("--out", default=None, help="write parallel.md and parallel.png here instead of docs/")
    p.add_argument("--targets", default=TARGETS, help="validation errors (%%) to time: a list for every backbone, "
                   f"or arch=list;arch=list (default {TARGETS})")
    args = p.parse_args()
    curves, throughput = read_runs(Path(args.curves)), read_runs(Path(args.throughput))
    if not curves or not throughput:
        raise SystemExit(f"no finished runs in {args.curves if not curves else args.throughput}")
    rows = ways(curves, throughput)
    doc = Path(args.out) / "parallel.md" if args.out else DOC
    png = doc.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    load = Path(args.throughput) / "load.txt"
    text = [
        f"Composed by `PYTHONPATH=src python benchmarks/parallel.py --curves {args.curves} --throughput "
        f"{args.throughput}` from {len(curves)} curve runs (`contsup reproduce parallel`) and {len(throughput)} "
        "throughput runs (`bash benchmarks/parallel_throughput.sh`; load average "
        + (load.read_text().strip() if load.is_file() else "not recorded") + ").",
        "",
        tables(rows, parse_targets(args.targets)),
        "",
        f"![validation error against composed training wall time]({png.name})",
    ]
    if args.check:
        text += ["", "Check: real runs against the composed clock and curve.", "",
                 check([r for f in args.check if (r := read_run(Path(f))) is not None], rows)]
    print("\n".join(text))
    figure(rows, png)
    write_region(doc, "parallel-measured", "\n".join(text), title="# Parallel training")


if __name__ == "__main__":
    main()
