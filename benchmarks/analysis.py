"""Reproduce docs/analysis.md: train R0, R1E and E2E (ResNet-32, Fashion-MNIST, K=16), run `contsup analyze`.

    PYTHONPATH=src python benchmarks/analysis.py            # train what is missing, analyze, rewrite the doc's table
    PYTHONPATH=src python benchmarks/analysis.py --retrain  # train all three again

Runs go to runs/analysis/ (not committed); the CSV and plot to docs/analysis/; the table between the
RESULTS markers of docs/analysis.md is regenerated, with the commands, timings and load averages.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from docregion import write_region

ROOT = Path(__file__).resolve().parent.parent
RUNS = Path("runs/analysis")
OUT = Path("docs/analysis")
DOC = ROOT / "docs" / "analysis.md"
TRAIN = ["train", "--data", "fashion-mnist", "--arch", "resnet32", "--epochs", "2", "--train-subset", "10000",
         "--batch-size", "128", "--lr", "0.1", "--seed", "0", "--device", "cpu", "--no-progress"]
MODELS = {"r0": ["--modules", "16", "--context", "R0"], "r1e": ["--modules", "16", "--context", "R1E"],
          "e2e": ["--modules", "1", "--context", "R0"]}
ANALYZE = ["analyze", *(str(RUNS / m) for m in MODELS), "--labels", "R0 K=16,R1E K=16,E2E",
           "--train-size", "3000", "--test-size", "1000", "--recon-size", "1000", "--recon-steps", "100",
           "--title", "ResNet-32, Fashion-MNIST: what is left at each cut (K=16 cuts; E2E at the same units)",
           "--out", str(OUT)]


def contsup(args: list[str]) -> tuple[float, float, tuple[float, ...]]:
    """Run `python -m contsup ARGS` single-threaded from the repo root; (wall s, CPU s, load average after)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    print("$ " + command_line(args), flush=True)
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "contsup", *args], cwd=ROOT, env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return time.perf_counter() - start, used, os.getloadavg()


def command_line(args: list[str]) -> str:
    """The shell command line of `python -m contsup ARGS`, quoted where needed."""
    quoted = [f'"{a}"' if any(c in a for c in " ,=:()") and not a.startswith("runs") else a for a in args]
    return "OMP_NUM_THREADS=1 python -m contsup " + " ".join(quoted)


def table(path: Path) -> str:
    """The CSV as a markdown table: one line per run and cut, h and h^c side by side."""
    rows = list(csv.DictReader(path.open()))
    lines = ["| run | cut (unit) | probe acc % h / hc | probe CE h / hc | H(y)-CE h / hc | PSNR dB h / hc |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["feature"] != "h":
            continue
        c = next(x for x in rows if x["run"] == r["run"] and x["unit"] == r["unit"] and x["feature"] == "hc")

        def pair(key: str, spec: str, h: dict = r, hc: dict = c) -> str:
            a, b = format(float(h[key]), spec), format(float(hc[key]), spec)
            return a if h["supplied"] == "False" else f"{a} / {b}"

        lines.append(f"| {r['run']} | {r['name']} ({r['unit']}) | {pair('probe_acc', '.2f')} | "
                     f"{pair('probe_ce', '.3f')} | {pair('info_lb', '.3f')} | {pair('recon_psnr', '.2f')} |")
    return "\n".join(lines)


def main() -> None:
    """Train the missing runs, analyze them, rewrite the doc's results section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="train all three runs again")
    args = parser.parse_args()
    log = ["| run | final test error % | training time (s) | images/s | parameters (backbone / heads / context) |",
           "|---|---|---|---|---|"]
    for name, flags in MODELS.items():
        folder = ROOT / RUNS / name
        if args.retrain and folder.exists():
            shutil.rmtree(folder)
        if not (folder / "checkpoint.pt").exists():
            contsup([*TRAIN, *flags, "--out", str(RUNS / name)])
        s = json.loads((folder / "summary.json").read_text())
        p = s["params"]
        log.append(f"| {name} | {s['final_test_error']:.2f} | {s['train_time_s']:.0f} | {s['images_per_s']:.1f} | "
                   f"{p['backbone']:,} / {p['heads']:,} / {p['context']:,} |")
    log.append("")
    wall, cpu, load = contsup(ANALYZE)
    log.append(f"`analyze` of the 3 runs x 15 cuts: {wall:.0f} s wall, {cpu:.0f} s CPU; load average after it "
               f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min).")
    commands = [command_line([*TRAIN, *f, "--out", str(RUNS / n)]) for n, f in MODELS.items()]
    commands.append(command_line(ANALYZE))
    section = "\n".join([
        "Commands (run by `benchmarks/analysis.py`, from the repository root with `PYTHONPATH=src`):", "",
        "```", *commands, "```", "",
        "The three runs (2-core CPU shared with other jobs, no GPU, one thread per job; training times "
        "depend on that load):", "", *log, "",
        table(ROOT / OUT / "analysis.csv"), "", "![probe accuracy, CE and PSNR per cut](analysis/analysis.png)", "",
    ])
    write_region(DOC, "analysis", section, title="# Information diagnostics")
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
