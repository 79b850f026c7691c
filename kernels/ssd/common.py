"""Triton helpers shared by the SSD kernels: the step-size transform and its derivative.

dt' = clamp(softplus?(dt + dt_bias), lo, hi). softplus passes inputs above 20 through unchanged (torch's default
threshold, as mamba_ssm does); log1p is evaluated with Goldberg's correction so that tiny steps stay exact.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

__all__ = ["prepare_dt", "prepare_dt_grad", "dot_precision", "mm"]

# The Triton interpreter (TRITON_INTERPRET=1) multiplies bfloat16 tiles as their raw uint16 bits; `mm` hands it
# float32 copies instead (exact: products of bf16 values are exact in float32, as on the tensor cores).
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on"))


def dot_precision(dtype_is_fp32: bool) -> str:
    """tl.dot input precision: exact float32 ('ieee') for float32 inputs, the tensor-core default otherwise."""
    return "ieee" if dtype_is_fp32 else "tf32"


@triton.jit
def mm(a, b, PREC: tl.constexpr):
    """a @ b with float32 accumulation; a, b of one dtype."""
    if _INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _log1p(u):
    w = 1.0 + u
    return tl.where(w == 1.0, u, tl.log(w) * (u / (w - 1.0)))


@triton.jit
def prepare_dt(dt, bias, dt_lo, dt_hi, SOFTPLUS: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    """dt' from the raw float32 step dt and the head's bias (0.0 when none)."""
    v = dt + bias
    if SOFTPLUS:
        v = tl.where(v <= 20.0, _log1p(tl.exp(tl.minimum(v, 20.0))), v)
    if HAS_LO:
        v = tl.maximum(v, dt_lo)
    if HAS_HI:
        v = tl.minimum(v, dt_hi)
    return v


@triton.jit
def prepare_dt_grad(dt, bias, grad, dt_lo, dt_hi, SOFTPLUS: tl.constexpr, HAS_LO: tl.constexpr,
                    HAS_HI: tl.constexpr):
    """d loss / d(dt + bias) given grad = d loss / d dt' (clamp passes the gradient where lo <= v <= hi)."""
    v = dt + bias
    if SOFTPLUS:
        sig = 1.0 / (1.0 + tl.exp(-tl.minimum(v, 20.0)))
        grad_v = tl.where(v <= 20.0, grad * sig, grad)
        v = tl.where(v <= 20.0, _log1p(tl.exp(tl.minimum(v, 20.0))), v)
    else:
        grad_v = grad
    if HAS_LO:
        grad_v = tl.where(v >= dt_lo, grad_v, 0.0)
    if HAS_HI:
        grad_v = tl.where(v <= dt_hi, grad_v, 0.0)
    return grad_v
