"""The budget ladder (docs/results.md): train the rungs of the `ladder` preset not measured yet, in order, resumably.

The 2-epoch rung is the protocol and heads presets' runs, and E2E and R1E at 4 epochs are the protocol
preset's cpu-long runs; this runs the rest, the minimum answer first (E2E and the best method at 8 epochs,
the best method at 4), `--workers` at a time, each recipe in its own folder <out>/<recipe> (run folders do
not name the epochs). Rerunning the same command skips finished runs and resumes interrupted ones:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ladder.py --out runs/ladder --workers 2

then collect each rung as usual, e.g.
`contsup reproduce ladder --recipe cpu-8ep --out runs/ladder/cpu-8ep --collect --results docs/results`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from contsup.errors import ContsupError
from contsup.files import check_out_dir
from contsup.reproduce.presets import Job, jobs, load_preset
from contsup.reproduce.sweep import run_sweep

# (recipe, contexts) in the order they run: the best K = 16 method on validation (E + AugLocal) and E2E
# first, then the runner-up (R0 + AugLocal), then R1E at 8 epochs.
ORDER = [("cpu-8ep", "E2E"), ("cpu-4ep", "E"), ("cpu-8ep", "E"), ("cpu-4ep", "R0"), ("cpu-8ep", "R0"),
         ("cpu-8ep", "R1E")]


def ladder_jobs(out: str | Path, data_dir: str | None = None) -> list[Job]:
    """The ladder's runs not measured by another preset, in the order they run, each under <out>/<recipe>."""
    preset = load_preset("ladder")
    over = {"data_root": data_dir} if data_dir else {}
    return [job for recipe, context in ORDER
            for job in jobs(preset, recipe, Path(out) / recipe, only={"context": [context]}, overrides=over)]


def main() -> None:
    """Run the ladder's remaining runs, logging one line per run with a timestamp."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="sweep folder; each recipe's runs go to <out>/<recipe>")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (set OMP_NUM_THREADS to share cores)")
    p.add_argument("--data-dir", default=None, help="directory holding Fashion-MNIST's files")
    args = p.parse_args()
    try:
        todo = ladder_jobs(check_out_dir(args.out, "--out"), args.data_dir)
        report = run_sweep(todo, workers=args.workers,
                           log=lambda line: print(time.strftime("%Y-%m-%d %H:%M:%S"), line, flush=True))
    except ContsupError as err:
        sys.exit(f"ladder: error: {err}")
    print(f"done earlier {len(report.done)}, trained {len(report.trained)}, resumed {len(report.resumed)}, "
          f"failed {len(report.failed)}", flush=True)


if __name__ == "__main__":
    main()
