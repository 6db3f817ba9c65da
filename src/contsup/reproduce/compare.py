"""Run folders read back: one table of their results and differing settings, and plots of their curves.

A run folder holds checkpoint.pt, metrics.jsonl (one line per epoch) and summary.json (written when the
run ends); only the two JSON files are read here, never the checkpoint.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contsup.config import PLACE
from contsup.errors import ContsupError
from contsup.reproduce.collect import plot_error_vs_memory
from contsup.reproduce.records import read_metrics, read_summary
from contsup.tables import markdown_table, pyplot, save_figure, text_table, write_csv
from contsup.train.runfolder import METRICS, SUMMARY

MIB = 2**20
IGNORED = {path.split(".")[-1] for path in PLACE}  # flat names of the place settings
# Settings of local learning only: an end-to-end run (K = 1) has no cuts, heads or context.
LOCAL_ONLY = {"context", "head", "loss", "width", "widen", "cut_table", "cuts", "recon", "image_encoder"}


@dataclass
class RunRecord:
    """One run folder: its settings, its per-epoch metrics and, once it has ended, its summary."""

    folder: Path
    settings: dict[str, str]
    history: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def method(self) -> str:
        """`E2E` for one module, else `<context> K=<modules>` (only `K=` for a run without a summary yet)."""
        if "modules" in self.settings:
            k, context = self.settings["modules"], self.settings["context"] if "context" in self.settings else ""
        elif self.history:
            k, context = str(len(self.history[0]["local_losses"]) + 1), ""
        else:
            return "?"
        return "E2E" if k == "1" else f"{context} K={k}".lstrip()


def _text(value: Any) -> str:
    """A setting as one short string (lists and reconstruction weights comma-joined)."""
    if isinstance(value, dict):
        return ",".join(str(v) for v in value.values())
    if isinstance(value, list):
        return ",".join(".".join(map(str, v)) if isinstance(v, list) else str(v) for v in value)
    return str(value)


def flat_settings(run: dict[str, Any]) -> dict[str, str]:
    """The run configuration stored in summary.json (`meta.run`) as one flat name -> text mapping."""
    data = {("dataset" if k == "name" else k): v for k, v in run["data"].items()}
    flat = {**data, "arch": run["arch"], **run["local"], **run["train"]}
    if flat.get("modules") == 1:
        flat = {k: v for k, v in flat.items() if k not in LOCAL_ONLY}
    return {k: _text(v) for k, v in flat.items() if k not in IGNORED}


def read_run(folder: str | Path) -> RunRecord:
    """Read one run folder's summary.json (if the run has ended) and metrics.jsonl, both checked."""
    folder = Path(folder)
    summary_path, metrics_path = folder / SUMMARY, folder / METRICS
    if not (os.path.lexists(summary_path) or os.path.lexists(metrics_path)):
        raise ContsupError(f"{folder} is not a run folder (no {SUMMARY} or {METRICS})")
    summary = read_summary(summary_path) if os.path.lexists(summary_path) else None
    history = read_metrics(metrics_path) if os.path.lexists(metrics_path) else []
    run = (summary or {}).get("meta", {}).get("run")
    return RunRecord(folder, flat_settings(run) if run else {}, history, summary)


def _is_run(folder: Path) -> bool:
    return os.path.lexists(folder / SUMMARY) or os.path.lexists(folder / METRICS)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders named by `paths`: a run folder, a file inside one, or a folder whose sub-folders are runs."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ContsupError(f"{p} does not exist")
        folder = p if p.is_dir() else p.parent
        if _is_run(folder):
            found.append(folder)
            continue
        try:
            children = sorted(c for c in folder.iterdir() if c.is_dir() and _is_run(c))
        except OSError as err:
            raise ContsupError(f"cannot list {folder}: {err.strerror or err}") from None
        if not children:
            raise ContsupError(f"{p} holds no run folder (no {SUMMARY} or {METRICS} in it or its sub-folders)")
        found += children
    return list(dict.fromkeys(found))


def varying_settings(records: Sequence[RunRecord]) -> list[str]:
    """Settings that differ between the runs (modules and context are part of the method's name)."""
    keys = dict.fromkeys(k for r in records for k in r.settings)
    return [k for k in keys if k not in ("modules", "context")
            and len({r.settings[k] for r in records if k in r.settings}) > 1]


def _names(records: Sequence[RunRecord]) -> list[str]:
    """Each run's folder name, or its whole path where two folders share a name."""
    names = [r.folder.name for r in records]
    return [n if names.count(n) == 1 else str(r.folder) for n, r in zip(names, records, strict=True)]


def result_row(record: RunRecord, name: str) -> dict[str, Any]:
    """One run's results as a flat record; an unfinished run is summarised from its metrics so far."""
    s, h = record.summary, record.history
    tested = [r for r in h if "test_error" in r]  # eval_every skips epochs
    if s is None and not tested:
        raise ContsupError(f"{record.folder} has no finished and evaluated epoch yet")
    best = min(tested, key=lambda r: r["test_error"]) if tested else None
    row: dict[str, Any] = {"run": name, "folder": str(record.folder), "method": record.method,
                           **record.settings, "finished": s is not None}
    if s is not None:
        row.update(epochs_done=s["epochs"], final_test_error=s["final_test_error"],
                   best_test_error_selected_on_test=s["best_test_error_selected_on_test"], best_epoch=s["best_epoch"],
                   train_time_s=s["train_time_s"], images_per_s=s["images_per_s"],
                   peak_memory_mib=s["peak_memory_bytes"] / MIB, peak_memory_kind=s["peak_memory_kind"])
        if "step_peak_memory_bytes" in s:
            row.update(step_peak_memory_mib=s["step_peak_memory_bytes"] / MIB,
                       step_peak_memory_kind=s["step_peak_memory_kind"])
    else:
        assert best is not None
        row.update(epochs_done=h[-1]["epoch"], final_test_error=tested[-1]["test_error"],
                   best_test_error_selected_on_test=best["test_error"], best_epoch=best["epoch"],
                   train_time_s=sum(r["epoch_time"] for r in h), peak_memory_mib=h[-1]["peak_memory_bytes"] / MIB)
    return row


def result_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Every run's result row, in the order given."""
    return [result_row(r, n) for r, n in zip(records, _names(records), strict=True)]


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_runs(rows: Sequence[dict[str, Any]], varying: Sequence[str], markdown: bool = False) -> str:
    """The results table (settings that differ as columns) and a legend of the memory columns."""
    header = ["run", "method", *varying, "epochs", "final test err %", "best err % (epoch)",
              "step peak MiB", "process peak MiB", "train time s"]
    cells = [[r["run"] + ("" if r["finished"] else " (unfinished)"), r["method"],
              *(str(r.get(k, "-")) for k in varying), str(r["epochs_done"]), f"{r['final_test_error']:.2f}",
              f"{r['best_test_error_selected_on_test']:.2f} ({r['best_epoch']})", _mib(r.get("step_peak_memory_mib")),
              _mib(r["peak_memory_mib"]), f"{r['train_time_s']:.0f}"] for r in rows]
    step_kinds = sorted({r["step_peak_memory_kind"] for r in rows if "step_peak_memory_kind" in r})
    kinds = sorted({r["peak_memory_kind"] for r in rows if "peak_memory_kind" in r})
    legend = [
        "final test err: the last epoch's; best err: the best epoch's, selected on the test set (for comparison only)",
        "step peak: tensor memory of one training step of the run's network at its batch size, above what lives "
        f"between steps ({', '.join(step_kinds) or 'not recorded'})",
        f"process peak: the whole process, runtime and dataset included ({', '.join(kinds) or 'not recorded'})",
    ]
    return (markdown_table if markdown else text_table)(header, cells) + "\n\n" + "\n".join(legend)


def plot_curves(records: Sequence[RunRecord], path: str | Path) -> None:
    """Test error of every run against epoch, then one panel per run with each module's training loss.

    The losses are the rows' `curve` points (means over slices of each epoch) where every row has them, so
    that a one-epoch run draws a line; older runs: one point per epoch.
    """
    from matplotlib import ticker

    plt = pyplot()

    names = _names(records)
    panels = len(records) + 1
    cols = min(3, panels)
    fig, axes = plt.subplots(math.ceil(panels / cols), cols, figsize=(4.8 * cols, 3.8 * math.ceil(panels / cols)),
                             squeeze=False)
    flat = list(axes.flat)
    ax = flat[0]
    for record, name in zip(records, names, strict=True):
        tested = [r for r in record.history if "test_error" in r]
        ax.plot([r["epoch"] for r in tested], [r["test_error"] for r in tested], "o-", ms=3,
                label=f"{name} ({record.method})")
    ax.set(xlabel="epoch", ylabel="test error (%)", title="test error")
    ax.legend(fontsize=7)
    for ax, record, name in zip(flat[1:], records, names, strict=False):
        sliced = bool(record.history) and all("curve" in r for r in record.history)
        end = all("train_loss_end" in r for r in record.history)  # the epoch line's figure; older runs: epoch mean
        if sliced:
            points = [p for r in record.history for p in r["curve"]]
            epochs, losses = [p[0] for p in points], [p[1:] for p in points]
        else:
            epochs = [r["epoch"] for r in record.history]
            losses = [[*r["local_losses_end"], r["train_loss_end"]] if end else [*r["local_losses"], r["train_loss"]]
                      for r in record.history]
        k = len(losses[0]) if losses else 0
        cmap = plt.get_cmap("viridis")
        for m in range(k):
            last = m == k - 1
            tag = f"module {m + 1}" + (" (output)" if last else "") if m in (0, k - 2, k - 1) else None
            ax.plot(epochs, [row[m] for row in losses], "-" if sliced else "o-", ms=2, lw=2.2 if last else 1,
                    color="black" if last else cmap(m / max(k - 1, 1)), label=tag)
        what = "mean over slices of each epoch" if sliced else "last quarter of the epoch" if end else "epoch mean"
        ax.set(xlabel="epoch", ylabel=f"training loss ({what})",
               title=f"{name} ({record.method})", yscale="log")
        ax.yaxis.set_major_formatter(ticker.LogFormatter())
        ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
        ax.legend(fontsize=7)
    last_epoch = max((r["epoch"] for record in records for r in record.history), default=1)
    for ax in flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(ticker.MultipleLocator(max(1, math.ceil(last_epoch / 8))))  # whole epochs
        ax.set_xlim(0, last_epoch + 0.5)
    for ax in flat[panels:]:
        ax.set_visible(False)
    save_figure(fig, path, dpi=110)


def plot_memory(rows: Sequence[dict[str, Any]], varying: Sequence[str], path: str | Path, title: str = "") -> str:
    """Final test error against memory, one marker per method; the step peak when every run has one."""
    step = all("step_peak_memory_mib" in r for r in rows)
    methods: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = " ".join([r["method"], *(f"{k}={r[k]}" for k in varying if k in r)])
        methods.setdefault(label, []).append({
            "modules": r.get("modules", "?"), "final_test_error": r["final_test_error"], "final_test_error_std": 0.0,
            "peak_memory_mib": r["step_peak_memory_mib"] if step else r["peak_memory_mib"]})
    kind = "measured step peak memory" if step else "process peak memory"
    plot_error_vs_memory(methods, Path(path), title, kind)
    return kind


def write_report(records: Sequence[RunRecord], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """runs.csv, runs.md, curves.png and error-vs-memory.png in `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, varying = result_rows(records), varying_settings(records)
    paths = {"csv": out / "runs.csv", "markdown": out / "runs.md", "curves": out / "curves.png",
             "error_vs_memory": out / "error-vs-memory.png"}
    write_csv(rows, paths["csv"])
    paths["markdown"].write_text((f"### {title}\n\n" if title else "") + format_runs(rows, varying, True) + "\n")
    plot_curves(records, paths["curves"])
    plot_memory(rows, varying, paths["error_vs_memory"], title)
    return paths
