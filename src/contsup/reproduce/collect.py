"""Gather a sweep's finished runs into one CSV, a markdown table (mean ± std over seeds) and plots."""

from __future__ import annotations

import csv
import statistics
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contsup.config import head_settings
from contsup.errors import ContsupError
from contsup.reproduce.presets import Job
from contsup.reproduce.records import read_summary
from contsup.tables import markdown_table, pyplot, save_figure, write_csv
from contsup.train.runfolder import SUMMARY

# Settings shown as columns (seed is averaged over); the others are listed once above the table.
KEY_COLUMNS = ["arch", "dataset", "modules", "context", "loss", *head_settings(), "cut_table", "recon",
               "checkpoint_segments", "optimizer"]
# The budget every run of a sweep shares, written next to its table.
BUDGET = ["dataset", "train_subset", "val_split", "epochs", "batch_size", "lr", "schedule", "warmup_epochs",
          "warmup_steps", "local_init", "context_scale", "context_lr_scale", "clip_grad"]
METRICS = ["final_test_error", "final_val_error", "best_test_error_selected_on_test", "train_time_s", "images_per_s",
           "peak_memory_mib", "step_peak_mib", "params_total", "params_context"]


def _flat(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


def collect_rows(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """One row per finished run: its settings and final metrics (unfinished runs are left out)."""
    rows = []
    for job in jobs:
        path = Path(job.config.out or "") / SUMMARY
        if not path.is_file():
            continue
        s = read_summary(path)
        rows.append({
            "run": job.name, **{k: _flat(v) for k, v in job.settings.items()},
            "final_test_error": s["final_test_error"], "final_val_error": s.get("final_val_error"),
            "best_test_error_selected_on_test": s["best_test_error_selected_on_test"],
            "epochs_done": s["epochs"], "train_time_s": s["train_time_s"], "images_per_s": s["images_per_s"],
            "peak_memory_mib": s["peak_memory_bytes"] / 2**20, "peak_memory_kind": s["peak_memory_kind"],
            # the measured tensor memory of one training step (what local learning saves); older runs lack it
            "step_peak_mib": s["step_peak_memory_bytes"] / 2**20 if "step_peak_memory_bytes" in s else None,
            "params_total": s["params"]["total"], "params_context": s["params"]["context"], "device": s["device"],
        })
    return rows


# Columns of a row that come from the run's summary, with their types (the rest are the job's settings).
SUMMARY_COLUMNS = {"final_test_error": float, "final_val_error": float, "best_test_error_selected_on_test": float,
                   "epochs_done": int, "train_time_s": float, "images_per_s": float, "peak_memory_mib": float,
                   "peak_memory_kind": str, "step_peak_mib": float, "params_total": int, "params_context": int,
                   "device": str}


def earlier_rows(jobs: Sequence[Job], path: Path, finished: set[str]) -> list[dict[str, Any]]:
    """Rows of an earlier collect (`path`, this stem's CSV) for the jobs whose run folders are not here now.

    A sweep split over machines keeps its results: settings come from the job (typed), the summary's numbers
    from the CSV. A CSV that does not parse is refused in one line.
    """
    if not path.is_file():
        return []
    by_name = {job.name: job for job in jobs if job.name not in finished}
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for old in csv.DictReader(f):
                job = by_name.get(old.get("run", ""))
                if job is None:
                    continue
                numbers = {k: (t(old[k]) if old.get(k) not in (None, "") else None) for k, t in SUMMARY_COLUMNS.items()}
                rows.append({"run": job.name, **{k: _flat(v) for k, v in job.settings.items()}, **numbers})
    except (ValueError, KeyError, UnicodeDecodeError, csv.Error) as err:
        raise ContsupError(f"{path}: an earlier collect's CSV that does not parse ({err}); move it away") from None
    return rows


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY_COLUMNS)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped over seeds: each metric's mean and standard deviation (0 for one seed), and n."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for members in groups.values():
        agg = {k: members[0].get(k) for k in KEY_COLUMNS}
        agg["n"] = len(members)
        agg["seeds"] = ",".join(str(m["seed"]) for m in members)
        for m in METRICS:
            values = [float(r[m]) for r in members if r.get(m) is not None]  # no val error without a val split
            agg[m] = statistics.fmean(values) if values else None
            agg[m + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(agg)
    return sorted(out, key=lambda a: (a["arch"], a["dataset"], a["modules"], a["context"], a["loss"], str(a["recon"])))


def label(agg: dict[str, Any], varying: Sequence[str]) -> str:
    """A method's name in plots and tables: its context mode plus the settings that vary in this sweep."""
    parts = [str(agg["context"])]
    parts += [f"{k}={agg[k]}" for k in varying if k not in ("modules", "context")]
    return " ".join(parts)


def _varying(aggs: Sequence[dict[str, Any]]) -> list[str]:
    """Settings that differ between the local-learning rows (E2E has no cuts, heads or reconstruction)."""
    local = [a for a in aggs if a["context"] != "E2E"] or list(aggs)

    def differs(rows: Sequence[dict[str, Any]], key: str) -> bool:
        return len({str(a[key]) for a in rows}) > 1

    return [k for k in KEY_COLUMNS if differs(local, k) or (k in ("arch", "dataset") and differs(aggs, k))]


def _mean_std(agg: dict[str, Any], metric: str) -> str:
    if agg[metric] is None:
        return "-"
    return f"{agg[metric]:.2f}" + (f" ± {agg[metric + '_std']:.2f}" if agg["n"] > 1 else "")


def budget(rows: Sequence[dict[str, Any]]) -> str:
    """The recipe settings of the runs, one line ("varies" where runs differ)."""
    parts = []
    for k in BUDGET:
        values = {str(r.get(k)) for r in rows}
        parts.append(f"{k} = {values.pop() if len(values) == 1 else 'varies'}")
    return "Budget of every run: " + ", ".join(parts)


def _setting(agg: dict[str, Any], key: str) -> Any:
    """A row's setting for the table; "-" for the local-learning settings of E2E, which has none."""
    return "-" if agg["context"] == "E2E" and key not in ("arch", "dataset") else agg[key]


def markdown(aggs: Sequence[dict[str, Any]], title: str = "") -> str:
    """The aggregated table in markdown: settings that vary as columns, errors as mean ± std."""
    varying = [k for k in _varying(aggs) if k not in ("modules", "context")]
    fixed = [k for k in KEY_COLUMNS if k not in varying and k not in ("modules", "context")]
    lines = [f"### {title}", ""] if title else []
    if aggs:
        ref = next((a for a in aggs if a["context"] != "E2E"), aggs[0])
        lines += ["Common settings: " + ", ".join(f"{k} = {ref[k]}" for k in fixed)
                  + " (E2E: one module, no cuts or local heads)", ""]
    val = any(a["final_val_error"] is not None for a in aggs)
    head = ["K", "method", *varying, "seeds", "final test error %", *(["final val error %"] if val else []),
            "best epoch's test error % (selected on test)", "train time s", "images/s", "step peak MiB",
            "process peak MiB", "params", "context params"]
    cells = []
    for a in aggs:
        best = f"{a['best_test_error_selected_on_test']:.2f}"
        row = [a["modules"], a["context"], *(_setting(a, k) for k in varying), a["n"], _mean_std(a, "final_test_error"),
               *([_mean_std(a, "final_val_error")] if val else []), best,
               f"{a['train_time_s']:.0f}", f"{a['images_per_s']:.0f}",
               "-" if a["step_peak_mib"] is None else f"{a['step_peak_mib']:.1f}", f"{a['peak_memory_mib']:.0f}",
               f"{a['params_total']:,.0f}", f"{a['params_context']:,.0f}"]
        cells.append(row)
    return "\n".join([*lines, markdown_table(head, cells)]) + "\n"


def methods_of(aggs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Aggregated rows grouped by method label (context mode plus the settings that vary)."""
    varying = _varying(aggs)
    methods: dict[str, list[dict[str, Any]]] = {}
    for a in aggs:
        methods.setdefault(label(a, varying), []).append(a)
    return methods


def plot_error_vs_k(methods: dict[str, list[dict[str, Any]]], path: Path, title: str = "") -> None:
    """Test error against K, one line per method (E2E as a dashed horizontal line)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    rows = [a for members in methods.values() for a in members]
    ks = sorted({a["modules"] for a in rows if a["context"] != "E2E"}) or [1]
    for name, members in methods.items():
        members = sorted(members, key=lambda a: a["modules"])
        if all(a["context"] == "E2E" for a in members):
            for a in members:
                ax.axhline(a["final_test_error"], ls="--", color="gray", label=name)
            continue
        ax.errorbar([a["modules"] for a in members], [a["final_test_error"] for a in members],
                    yerr=[a["final_test_error_std"] for a in members], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (number of modules)")
    ax.set_ylabel("final test error (%)")
    ax.set_title(textwrap.fill(title or "test error against K", 70), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_error_vs_memory(methods: dict[str, list[dict[str, Any]]], path: Path, title: str = "",
                         memory_kind: str = "peak memory", metric: str = "peak_memory_mib") -> None:
    """Final test error against memory (`metric`, MiB), one marker style per method, each point labelled K=."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.4))
    for name, members in methods.items():
        ax.errorbar([a[metric] for a in members], [a["final_test_error"] for a in members],
                    yerr=[a["final_test_error_std"] for a in members], marker="o", ls="", capsize=3, label=name)
        for a in members:
            ax.annotate(f"K={a['modules']}", (a[metric], a["final_test_error"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{memory_kind} (MiB)")
    ax.set_ylabel("final test error (%)")
    ax.set_title(textwrap.fill((title + ": " if title else "") + "error against memory", 70), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def collect(jobs: Sequence[Job], out_dir: str | Path, stem: str, title: str = "") -> dict[str, Any]:
    """Write <stem>.csv, <stem>.md and the two plots into `out_dir`; returns paths and counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / f"{stem}.csv", "markdown": out / f"{stem}.md",
             "error_vs_k": out / f"{stem}-error-vs-K.png", "error_vs_memory": out / f"{stem}-error-vs-memory.png"}
    here = collect_rows(jobs)
    kept = earlier_rows(jobs, paths["csv"], {r["run"] for r in here})
    order = {job.name: i for i, job in enumerate(jobs)}
    rows = sorted(here + kept, key=lambda r: order[r["run"]])
    write_csv(rows, paths["csv"])
    aggs = aggregate(rows)
    text = markdown(aggs, title)
    if rows:
        text += "\n" + budget(rows) + ".\n"
    kinds = sorted({r["peak_memory_kind"] for r in rows})
    text += (f"\nStep peak: one training step's tensor memory at the run's batch size, measured after training; "
             f"process peak: {', '.join(kinds)}. " if kinds else "\n") + f"{len(rows)} of {len(jobs)} runs finished"
    text += (f" ({len(kept)} read from the earlier {paths['csv'].name}: their run folders are elsewhere).\n" if kept
             else ".\n")
    paths["markdown"].write_text(text)
    if aggs:
        methods = methods_of(aggs)
        plot_error_vs_k(methods, paths["error_vs_k"], title)
        step = all(a["step_peak_mib"] is not None for a in aggs)
        plot_error_vs_memory(methods, paths["error_vs_memory"], title,
                             "step peak memory (one training step's tensors)" if step else
                             "peak memory, " + ", ".join(kinds), "step_peak_mib" if step else "peak_memory_mib")
    return {"runs": len(rows), "configurations": len(jobs), **{k: str(v) for k, v in paths.items()}}
