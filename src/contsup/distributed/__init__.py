"""Pipelined (and data-parallel) local learning on torch.distributed: one rank per stage of modules."""

from contsup.distributed.launch import run_pipeline
from contsup.distributed.pipeline import PipelineConfig, PipelineStep
from contsup.distributed.topology import Topology, partition

__all__ = ["PipelineConfig", "PipelineStep", "Topology", "partition", "run_pipeline"]
