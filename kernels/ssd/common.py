"""Triton helpers shared by the SSD kernels: which head, chunk or state tile a program works on, the exponential of
the decays, and the step-size transform and its derivative.

dt' = clamp(softplus?(dt + dt_bias), lo, hi). softplus passes inputs above 20 through unchanged (torch's default
threshold, as mamba_ssm does); log1p is evaluated with Goldberg's correction so that tiny steps stay exact.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

from .layout import ALIGNMENT

__all__ = ["chunk_extent", "chunk_tile_pair", "dot_precision", "dt_head_rows", "exp_ftz", "head_chunk_program",
           "known_multiple", "mm", "prepare_dt", "prepare_dt_grad", "raw_dt_rows", "state_tile", "step_factors",
           "step_log_decays", "step_tokens", "tile_heads"]

# The Triton interpreter (TRITON_INTERPRET=1) multiplies bfloat16 tiles as their raw uint16 bits; `mm` hands it
# float32 copies instead (exact: products of bf16 values are exact in float32, as on the tensor cores).
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on"))
_ALIGNMENT = tl.constexpr(ALIGNMENT)
_LOG2E = tl.constexpr(1.4426950408889634)


def dot_precision(dtype_is_fp32: bool) -> str:
    """tl.dot input precision: exact float32 ('ieee') for float32 inputs, the tensor-core default otherwise."""
    return "ieee" if dtype_is_fp32 else "tf32"


@triton.jit
def exp_ftz(x):
    """e^x as one multiply and ex2.approx.ftz, whose results below 2^-126 are 0 (nothing the kernels' decays would
    keep): tl.exp's ex2 keeps denormal results at three more instructions per call. The interpreter, which has no
    libdevice, takes tl.exp."""
    if _INTERPRET:
        return tl.exp(x)
    return libdevice.exp2(x * _LOG2E)


@triton.jit
def mm(a, b, PREC: tl.constexpr):
    """a @ b with float32 accumulation; a, b of one dtype."""
    if _INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def known_multiple(v, ALIGNED: tl.constexpr):
    """A token index or count v, written (when ALIGNED: the caller knows v is a multiple of layout.ALIGNMENT, 16,
    ChunkTable.aligned) as (v // 16) * 16, from which the compiler proves it: the per-token vectors (s, dt') loaded
    at offsets built from v, and masks against it, then load 8 or 16 bytes per instruction instead of 4 (each
    under its own predicate)."""
    if ALIGNED:
        v = v // _ALIGNMENT * _ALIGNMENT
    return v


@triton.jit
def chunk_extent(chunk_start_ptr, chunk_len_ptr, chunk, ALIGNED: tl.constexpr):
    """The chunk's first token c0 (int64) and length clen (see `known_multiple` for ALIGNED)."""
    c0 = known_multiple(tl.load(chunk_start_ptr + chunk), ALIGNED)
    return c0.to(tl.int64), known_multiple(tl.load(chunk_len_ptr + chunk), ALIGNED)


@triton.jit
def head_chunk_program(chunk_start_ptr, chunk_len_ptr, headdim, heads_per_group, BLOCK_P: tl.constexpr,
                       CHUNK_AXIS: tl.constexpr, ALIGNED: tl.constexpr):
    """A program of a kernel per (head and head_dim block, ..., chunk): grid axis 0 is head * blocks + block,
    axis CHUNK_AXIS the chunk. Returns head (int64: it multiplies a head stride, which may pass 2^31), its group,
    the block's head_dim columns offs_p and mask_p, and the chunk's index (int64), first token c0 (int64) and
    length clen (`chunk_extent`)."""
    blocks_p = tl.cdiv(headdim, BLOCK_P)
    head = (tl.program_id(0) // blocks_p).to(tl.int64)
    offs_p = (tl.program_id(0) % blocks_p) * BLOCK_P + tl.arange(0, BLOCK_P)
    chunk = tl.program_id(CHUNK_AXIS).to(tl.int64)
    c0, clen = chunk_extent(chunk_start_ptr, chunk_len_ptr, chunk, ALIGNED)
    return head, head // heads_per_group, offs_p, offs_p < headdim, chunk, c0, clen


@triton.jit
def state_tile(headdim, dstate, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """A program's BLOCK_P x BLOCK_N tile of a (headdim, dstate) state, for the kernels per (sequence or segment
    or chunk, head, tile): grid axis 2 is head_dim block * d_state blocks + d_state block. Returns the head_dim
    columns offs_p / mask_p, the d_state columns offs_n / mask_n, and the tile's offsets into a state with their
    mask."""
    pid_p = tl.program_id(2) // tl.cdiv(dstate, BLOCK_N)
    pid_n = tl.program_id(2) % tl.cdiv(dstate, BLOCK_N)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    return (offs_p, mask_p, offs_n, mask_n, offs_p[:, None] * dstate + offs_n[None, :],
            mask_p[:, None] & mask_n[None, :])


@triton.jit
def tile_heads(head, offs_p, ntokens, stride_h, HEADS: tl.constexpr, BLOCK_P: tl.constexpr):
    """For a state pass's tile whose rows offs_p are one head's head_dim columns (HEADS 1) or the whole head_dim of
    `head` and the head after it (HEADS 2, BLOCK_P // 2 rows each): each row's offset from `head`'s first column
    in a (T, nheads, headdim) tensor of head stride stride_h, and the offset of the tile's head(s) in the
    (nheads, ntokens) arrays (a scalar for one head, (2,) for two)."""
    if HEADS == 1:
        cols = offs_p
        rows = head * ntokens
    else:
        cols = offs_p // (BLOCK_P // 2) * stride_h + offs_p % (BLOCK_P // 2)
        rows = (head + tl.arange(0, 2)) * ntokens
    return cols, rows


@triton.jit
def _head_rows(v, BLOCK_P: tl.constexpr):
    """(2,) values of a pair of heads (`tile_heads`) as (BLOCK_P,): the first head's on the first half of the tile's
    rows, the second head's on the other half."""
    first, second = tl.split(v)
    return tl.where(tl.arange(0, BLOCK_P) < BLOCK_P // 2, first, second)


@triton.jit
def _head_columns(v, BLOCK_P: tl.constexpr):
    """(tokens, 2) values of a pair of heads as (tokens, BLOCK_P), split between the halves as `_head_rows`."""
    first, second = tl.split(v)
    return tl.where((tl.arange(0, BLOCK_P) < BLOCK_P // 2)[None, :], first[:, None], second[:, None])


@triton.jit
def step_factors(w, decay, mask_t, BLOCK_P: tl.constexpr, HEADS: tl.constexpr):
    """A state pass's step: per-token weights w ((BLOCK_T,), or (BLOCK_T, 2) for two heads) as the factor of its
    (BLOCK_T, BLOCK_P) tile of x or dy, 0 past the sequence's end (mask_t), and the state's decay over the step
    (a scalar, or (2,)) as the factor of its (BLOCK_P, BLOCK_N) tile."""
    if HEADS == 1:
        w_tile = tl.where(mask_t, w, 0.0)[:, None]
        decay_tile = decay
    else:
        w_tile = tl.where(mask_t[:, None], _head_columns(w, BLOCK_P), 0.0)
        decay_tile = _head_rows(decay, BLOCK_P)[:, None]
    return w_tile, decay_tile


@triton.jit
def step_tokens(ptr, row, offs_t, left, HEADS: tl.constexpr):
    """A (nheads, ntokens) array at a step's tokens offs_t from offset row (`tile_heads`' rows plus the step's first
    token): (BLOCK_T,) for one head, (BLOCK_T, 2) for two, 0 from token `left` on (past the sequence's end)."""
    if HEADS == 1:
        v = tl.load(ptr + row + offs_t, mask=offs_t < left, other=0.0)
    else:
        v = tl.load(ptr + row[None, :] + offs_t[:, None], mask=(offs_t < left)[:, None], other=0.0)
    return v


@triton.jit
def step_log_decays(s_ptr, rows, t_begin, t_end, step, offs_t, BLOCK_T: tl.constexpr,
                    STEPS_PER_CHUNK: tl.constexpr, HEADS: tl.constexpr):
    """For a state pass's walk of a sequence (tokens t_begin..t_end) in BLOCK_T-token steps, for the head(s) at
    `rows` of the (nheads, ntokens) array s (`tile_heads`): s at the tokens of step number `step` (0 past the
    sequence's end; (BLOCK_T,), or (BLOCK_T, 2) for two heads), at the token before them (0 at a chunk's start)
    and at the step's last token (scalars, or (2,))."""
    t0 = (t_begin + step * BLOCK_T).to(tl.int64)
    row = rows + t0
    inside = step % STEPS_PER_CHUNK != 0
    s_t = step_tokens(s_ptr, row, offs_t, t_end - t0, HEADS)
    if HEADS == 1:
        s_before = tl.load(s_ptr + row - 1, mask=inside, other=0.0)
    else:
        s_before = tl.where(inside, tl.load(s_ptr + tl.maximum(row - 1, rows)), 0.0)
    return s_t, s_before, tl.load(s_ptr + row + tl.minimum(BLOCK_T, t_end - t0) - 1)


@triton.jit
def chunk_tile_pair(chunk_start_ptr, chunk_len_ptr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_K: tl.constexpr, ALIGNED: tl.constexpr):
    """A program of a kernel per (BLOCK_M x BLOCK_K tile of a chunk x chunk matrix, group, chunk): grid axis 0 is
    row tile * column tiles + column tile. Returns group (int64), chunk, its first token c0 (int64) and length
    clen (`chunk_extent`), whether the tile has work (on or below the diagonal, rows starting inside the chunk),
    and the tile's rows offs_m / mask_m and columns offs_k / mask_k."""
    tiles_k: tl.constexpr = CHUNK // BLOCK_K
    pid_m = tl.program_id(0) // tiles_k
    pid_k = tl.program_id(0) % tiles_k
    chunk = tl.program_id(2)
    c0, clen = chunk_extent(chunk_start_ptr, chunk_len_ptr, chunk, ALIGNED)
    active = (pid_k * BLOCK_K <= pid_m * BLOCK_M + BLOCK_M - 1) & (pid_m * BLOCK_M < clen)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    return tl.program_id(1).to(tl.int64), chunk, c0, clen, active, offs_m, offs_m < clen, offs_k, offs_k < clen


@triton.jit
def dt_head_rows(chunk_start_ptr, chunk_len_ptr, ntokens, nheads, BLOCK: tl.constexpr, BLOCK_H: tl.constexpr,
                 ALIGNED: tl.constexpr):
    """A program of a kernel per (chunk, block of BLOCK_H heads) (grid axes 0, 1) over per-token step arrays: its
    heads and mask_h, the chunk's first token c0 (int64), the chunk's tokens offs (BLOCK), the (heads, tokens) mask
    and the offsets rows of that tile in the (nheads, ntokens) arrays."""
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = heads < nheads
    c0, clen = chunk_extent(chunk_start_ptr, chunk_len_ptr, tl.program_id(0), ALIGNED)
    offs = tl.arange(0, BLOCK)
    mask = mask_h[:, None] & (offs < clen)[None, :]
    return heads, mask_h, c0, offs, mask, heads.to(tl.int64)[:, None] * ntokens + c0 + offs[None, :]


@triton.jit
def raw_dt_rows(dt_ptr, bias_ptr, stride_dt_t, stride_dt_h, heads, mask_h, c0, offs, mask, BLOCK_H: tl.constexpr,
                HAS_BIAS: tl.constexpr):
    """On `dt_head_rows`'s tile: the raw steps of the token-major dt (float32, read as rows of BLOCK_H heads, not
    one 2-byte element per 32-byte sector) and the heads' dt_bias (0 without)."""
    raw = tl.load(dt_ptr + (c0 + offs[None, :]) * stride_dt_t + heads[:, None] * stride_dt_h, mask=mask,
                  other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_H,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + heads, mask=mask_h, other=0.0).to(tl.float32)
    return raw, bias


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
