"""SSD (Mamba-2) scan kernels: one dispatch point (`ssd_scan`, `ssd_step`), PyTorch references, input checks.

The Triton kernels live in archspec.kernels.ssd and are imported only when dispatched to.
"""

from .checks import SSDDims, SSDStepDims, check_ssd_inputs, check_ssd_step_inputs
from .dispatch import BACKENDS, resolve_backend, ssd_scan, ssd_step
from .reference import prepare_dt, ssd_chunked, ssd_naive, ssd_recurrent, ssd_step_reference

__all__ = [
    "BACKENDS",
    "SSDDims",
    "SSDStepDims",
    "check_ssd_inputs",
    "check_ssd_step_inputs",
    "prepare_dt",
    "resolve_backend",
    "ssd_chunked",
    "ssd_naive",
    "ssd_recurrent",
    "ssd_scan",
    "ssd_step",
    "ssd_step_reference",
]
