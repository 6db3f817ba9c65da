"""The paper's experiments as TOML presets, resumable sweeps over them, and result collection."""

from contsup.reproduce.collect import collect
from contsup.reproduce.presets import Job, Preset, available_presets, expand, jobs, load_preset
from contsup.reproduce.sweep import SweepReport, job_state, run_sweep

__all__ = ["Job", "Preset", "SweepReport", "available_presets", "collect", "expand", "job_state", "jobs",
           "load_preset", "run_sweep"]
