"""contsup: memory-efficient greedy local learning with Context Supply."""

__version__ = "0.1.0"
