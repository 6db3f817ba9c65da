"""Information diagnostics: what is left about the label and the input at every cut of a trained network."""

from contsup.analyze.analysis import AnalyzeConfig, Row, analyze_runs
from contsup.analyze.features import CutFeatures, parse_units, walk_boundaries
from contsup.analyze.probes import ProbeConfig, ProbeResult, label_entropy, linear_probe, mlp_probe
from contsup.analyze.recon_probe import ReconConfig, ReconResult, decoder_probe
from contsup.analyze.report import format_table, plot, write_csv

__all__ = [
    "AnalyzeConfig", "CutFeatures", "ProbeConfig", "ProbeResult", "ReconConfig", "ReconResult", "Row",
    "analyze_runs", "decoder_probe", "format_table", "label_entropy", "linear_probe", "mlp_probe", "parse_units",
    "plot", "walk_boundaries", "write_csv",
]
