"""Measuring training steps: peak tensor memory, bytes saved for backward, FLOPs, step time.

`contsup.memory` has no dependency on the method, so the method may use it (balanced cuts);
the runner (`contsup.profile.runner`) and FLOP split (`contsup.profile.flops`) build on the method.
"""

from contsup.memory import PeakMemory, SavedTensorCounter, measure_peak, saved_bytes

__all__ = ["PeakMemory", "SavedTensorCounter", "measure_peak", "saved_bytes"]
