"""Triton kernels for the Mamba-2 SSD scan: forward, backward (through autograd) and the decode step.

`ssd_scan_triton` and `ssd_step_triton` take the arguments of archspec.kernels.ssd_scan / ssd_step (minus
backend). Modules: layout (chunk table), config (tile sizes), common (step-size transform), forward,
backward_states, backward and tiles (kernels), state_products (the row-tile kernels' state term as one matmul),
wgmma, forward_wgmma and backward_wgmma (the Gluon walks for Hopper), autograd (the autograd.Function), step
(decode), offline_build (builds every kernel for sm_90 without a GPU).
"""

from .autograd import ssd_scan_triton
from .step import ssd_step_triton

__all__ = ["ssd_scan_triton", "ssd_step_triton"]
