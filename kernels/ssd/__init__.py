"""Triton kernels for the Mamba-2 SSD scan: forward, backward (through autograd) and the decode step.

`ssd_scan_triton` and `ssd_step_triton` take the arguments of archspec.kernels.ssd_scan / ssd_step (minus
backend). Modules: layout (chunk table), config (tile sizes), common (step-size transform), forward,
backward_states and backward (kernels), autograd (the autograd.Function), step (decode).
"""

from .autograd import ssd_scan_triton
from .step import ssd_step_triton

__all__ = ["ssd_scan_triton", "ssd_step_triton"]
