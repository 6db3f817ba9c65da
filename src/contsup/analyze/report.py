"""Analysis output: a CSV with every row, a terminal table, and a plot with one line per run across cuts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from contsup import tables
from contsup.analyze.analysis import Row


def write_csv(rows: Sequence[Row], path: str | Path) -> None:
    """All rows, one per (run, boundary, feature), floats rounded to 6 digits."""
    tables.write_csv([asdict(r) for r in rows], path, digits=6)


def _fmt(value: float | None, spec: str) -> str:
    """A number, or '-' where it was not measured."""
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[Row]) -> str:
    """Per run, one line per boundary: linear-probe accuracy / CE and PSNR of h and of h^c."""
    mlp = any(r.mlp_acc is not None for r in rows)
    cols = ["acc%", "CE", *(["mlp%"] if mlp else []), "PSNR"]
    head = f"{'cut':>5} {'unit':>4} | " + " ".join(f"{'h ' + c:>8}" for c in cols) + " | " + \
        " ".join(f"{'hc ' + c:>8}" for c in cols)
    lines: list[str] = []
    for run in dict.fromkeys(r.run for r in rows):
        by_unit: dict[int, dict[str, Row]] = {}
        for r in rows:
            if r.run == run:
                by_unit.setdefault(r.unit, {})[r.feature] = r
        lines += [f"{run}", head]
        for unit, feats in sorted(by_unit.items()):
            parts = []
            for f in ("h", "hc"):
                r = feats[f]
                vals = [_fmt(r.probe_acc, ".2f"), _fmt(r.probe_ce, ".4f"),
                        *([_fmt(r.mlp_acc, ".2f")] if mlp else []), _fmt(r.recon_psnr, ".2f")]
                parts.append(" ".join(f"{v:>8}" for v in vals))
            mark = "" if feats["h"].supplied else "   (no context: hc = h)"
            lines.append(f"{feats['h'].name:>5} {unit:>4} | {parts[0]} | {parts[1]}{mark}")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot(rows: Sequence[Row], path: str | Path, title: str | None = None) -> None:
    """Probe accuracy, probe CE and reconstruction PSNR across boundaries; solid h^c, dashed h where they differ."""
    metrics = [("probe_acc", "linear probe accuracy (%)"), ("probe_ce", "linear probe CE (nats)")]
    if any(r.mlp_acc is not None for r in rows):
        metrics.append(("mlp_acc", "MLP probe accuracy (%)"))
    if any(r.recon_psnr is not None for r in rows):
        metrics.append(("recon_psnr", "decoder PSNR (dB)"))
    units = sorted({r.unit for r in rows})
    names = {r.unit: r.name for r in rows}
    fig, axes = tables.pyplot().subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.0), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics, strict=True):
        for i, run in enumerate(dict.fromkeys(r.run for r in rows)):
            color = f"C{i}"
            mine = [r for r in rows if r.run == run]
            for feature, style in (("hc", "-"), ("h", "--")):
                pts = sorted((r.unit, getattr(r, key)) for r in mine if r.feature == feature)
                if feature == "h" and not any(r.supplied for r in mine):
                    continue  # hc is h everywhere: one line
                tag = run if feature == "hc" else f"{run} (h, before context)"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, color=color, label=tag)
        ax.set_xticks(units, [names[u] for u in units], rotation=90, fontsize=7)
        ax.set_xlabel("cut after unit (stage.block)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    tables.save_figure(fig, path)
