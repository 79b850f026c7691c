"""Causal multi-head attention with GQA, partial RoPE, an optional sliding window, optional qk-norm and an
optional causal depthwise conv over the fused q, k, v projection (mamba_ssm's MHA ``d_conv``)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archspec.blocks.cache import KVCache
from archspec.blocks.norm import RMSNorm
from archspec.blocks.packing import check_cu_seqlens, length_buckets
from archspec.kernels.conv import MAX_D_CONV, causal_conv1d, positions_in_sequences
from archspec.kernels.offsets import host_offsets

try:
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:
    flash_attn_func = flash_attn_varlen_func = None

ATTENTION_BACKENDS = ("auto", "sdpa", "flash")
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def flash_attn_available() -> bool:
    """Whether the flash_attn package could be imported."""
    return flash_attn_func is not None


def rope_inv_freq(rot_dim: int, theta: float, device=None) -> torch.Tensor:
    """(rot_dim // 2,) float64 inverse frequencies theta^(-2i / rot_dim)."""
    return theta ** (-torch.arange(0, rot_dim, 2, device=device, dtype=torch.float64) / rot_dim)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, rot_dim: int, theta: float) -> torch.Tensor:
    """Rotate the first rot_dim channels of every head by position (rotate-half convention).

    x (batch, seqlen, nheads, head_dim); positions (seqlen,) int64 absolute positions. Channel i < rot_dim/2 is
    paired with channel i + rot_dim/2 and the pair rotated by angle position * theta^(-2i / rot_dim); channels
    from rot_dim on pass through. Computed in float32 (float64 for float64 x); output in x's dtype.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = rope_inv_freq(rot_dim, theta, x.device).to(dtype)
    angles = positions.to(dtype)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x1, x2, rest = torch.split(x.to(dtype), [rot_dim // 2, rot_dim // 2, x.shape[-1] - rot_dim], dim=-1)
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
    return rotated.to(x.dtype)


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """(len(q_pos), len(k_pos)) bool, True where query at q_pos may attend key at k_pos.

    Key positions < 0 mark empty slots. With a window of w tokens a query sees itself and the w - 1 keys before.
    """
    q, k = q_pos[:, None], k_pos[None, :]
    allowed = (k >= 0) & (k <= q)
    if window is not None:
        allowed &= k > q - window
    return allowed


class Attention(nn.Module):
    """Causal self-attention: x (batch, seqlen, d_model) -> (batch, seqlen, d_model).

    in_proj (d_model -> head_dim * (n_heads + 2 * n_kv_heads), output order q, k, v); query head h reads
    key/value head h // (n_heads / n_kv_heads); optional q_norm / k_norm (RMSNorm over head_dim, before RoPE);
    RoPE on the first rope_fraction of each head's channels; out_proj (n_heads * head_dim -> d_model).
    sliding_window w: each query sees itself and the w - 1 tokens before it.
    d_conv > 0 (mamba_ssm's MHA with d_conv): conv1d, a causal depthwise conv of width d_conv with bias and no
    activation over the qkv_dim = head_dim * (n_heads + 2 * n_kv_heads) channels of in_proj's output, applied
    before the head split, qk-norm and RoPE (nn.Conv1d weight (qkv_dim, 1, d_conv), bias (qkv_dim,)); the
    decode cache then also keeps the last d_conv conv inputs.
    backend: "auto" (flash_attn for CUDA fp16/bf16 inputs when importable, else torch SDPA), "sdpa", "flash".
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        rope: bool = True,
        rope_theta: float = 10000.0,
        rope_fraction: float = 1.0,
        sliding_window: int | None = None,
        qk_norm: bool = False,
        bias: bool = False,
        d_conv: int = 0,
        backend: str = "auto",
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if n_heads <= 0:
            raise ValueError(f"n_heads: expected a positive integer, got {n_heads}")
        if head_dim is None:
            if d_model % n_heads != 0:
                raise ValueError(f"n_heads: expected a divisor of d_model={d_model} when head_dim is not given, "
                                 f"got {n_heads}")
            head_dim = d_model // n_heads
        if head_dim <= 0:
            raise ValueError(f"head_dim: expected a positive integer, got {head_dim}")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads <= 0 or n_heads % n_kv_heads != 0:
            raise ValueError(f"n_kv_heads: expected a positive divisor of n_heads={n_heads}, got {n_kv_heads}")
        if not 0.0 < rope_fraction <= 1.0:
            raise ValueError(f"rope_fraction: expected a value in (0, 1], got {rope_fraction}")
        rot_dim = 2 * (int(head_dim * rope_fraction) // 2)
        if rope and rot_dim == 0:
            raise ValueError(f"rope_fraction: rotates no channel pair of head_dim={head_dim}, got {rope_fraction}")
        if rope_theta <= 0:
            raise ValueError(f"rope_theta: expected a positive base, got {rope_theta}")
        if sliding_window is not None and sliding_window <= 0:
            raise ValueError(f"sliding_window: expected None or a positive number of tokens, got {sliding_window}")
        if not 0 <= d_conv <= MAX_D_CONV:
            raise ValueError(f"d_conv: expected 0 (no conv) or a conv width from 1 to {MAX_D_CONV} (the conv "
                             f"kernel's limit), got {d_conv}")
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"backend: expected one of {ATTENTION_BACKENDS}, got {backend!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.rope, self.rope_theta, self.rope_fraction, self.rot_dim = rope, rope_theta, rope_fraction, rot_dim
        self.sliding_window, self.backend, self.layer_idx = sliding_window, backend, layer_idx
        self.softmax_scale = 1.0 / math.sqrt(head_dim)
        self.d_conv, self.qkv_dim = d_conv, head_dim * (n_heads + 2 * n_kv_heads)
        self.in_proj = nn.Linear(d_model, self.qkv_dim, bias=bias, **factory)
        self.conv1d = (nn.Conv1d(self.qkv_dim, self.qkv_dim, kernel_size=d_conv, groups=self.qkv_dim,
                                 padding=d_conv - 1, bias=True, **factory) if d_conv > 0 else None)
        self.q_norm = RMSNorm(head_dim, **factory) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, **factory) if qk_norm else None
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias, **factory)

    def init_cache(self, batch_size: int, max_seqlen: int, device=None, dtype=None) -> KVCache:
        """Empty KV cache for up to max_seqlen tokens; a ring of min(sliding_window, max_seqlen) slots if windowed.
        With a conv, also a zero conv_state (batch_size, qkv_dim, d_conv) in the same dtype."""
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        cache_len = max_seqlen if self.sliding_window is None else min(self.sliding_window, max_seqlen)
        shape = (batch_size, cache_len, self.n_kv_heads, self.head_dim)
        conv_state = None
        if self.conv1d is not None:
            conv_state = torch.zeros(batch_size, self.qkv_dim, self.d_conv, device=device, dtype=dtype)
        return KVCache(k=torch.zeros(shape, device=device, dtype=dtype),
                       v=torch.zeros(shape, device=device, dtype=dtype), max_seqlen=max_seqlen,
                       conv_state=conv_state)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        cache: continue after the cached tokens and append this call's keys/values.
        cu_seqlens: (nseqs + 1,) offsets of sequences packed along seqlen (batch 1, no cache); attention and
        RoPE positions restart at every sequence start.
        """
        batch, seqlen, _ = x.shape
        if cu_seqlens is not None:
            if cache is not None:
                raise ValueError("cu_seqlens: packed sequences cannot be combined with a decode cache")
            check_cu_seqlens(cu_seqlens, batch, seqlen)
            positions = positions_in_sequences(cu_seqlens, seqlen).long()
        else:
            offset = 0 if cache is None else cache.seqlen_offset
            if cache is not None and offset + seqlen > cache.max_seqlen:
                raise ValueError(f"cache: holds at most max_seqlen={cache.max_seqlen} tokens, got {offset} cached + "
                                 f"{seqlen} new")
            positions = torch.arange(offset, offset + seqlen, device=x.device)
        q, k, v = self._project_qkv(x, positions, cache, cu_seqlens)
        if cu_seqlens is not None:
            y = self._attend_packed(q, k, v, cu_seqlens)
        elif cache is not None:
            y = self._attend_cached(q, k, v, positions, cache)
        else:
            y = self._attend(q, k, v)
        return self.out_proj(y.flatten(-2))

    def _project_qkv(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                     cu_seqlens: torch.Tensor | None = None):
        """q (batch, seqlen, n_heads, head_dim), k and v (batch, seqlen, n_kv_heads, head_dim)."""
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        qkv = self.in_proj(x)
        if self.conv1d is not None:
            qkv = self._conv(qkv, cache, cu_seqlens)
        q, k, v = torch.split(qkv, [q_dim, kv_dim, kv_dim], dim=-1)
        q = q.unflatten(-1, (self.n_heads, self.head_dim))
        k = k.unflatten(-1, (self.n_kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.n_kv_heads, self.head_dim))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q = apply_rope(q, positions, self.rot_dim, self.rope_theta)
            k = apply_rope(k, positions, self.rot_dim, self.rope_theta)
        return q, k, v

    def _conv(self, qkv: torch.Tensor, cache: KVCache | None, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        """Causal depthwise conv (+ bias, no activation) over qkv (batch, seqlen, qkv_dim) -> the same shape.

        Without a cache: zero history (restarting at each packed sequence start). With one: the cached conv
        inputs are the history and cache.conv_state is updated to the last d_conv inputs (one token: a direct
        multiply-add over the state; more: the conv over the state followed by the new inputs).
        """
        weight, bias = self.conv1d.weight[:, 0, :], self.conv1d.bias
        if cache is None:
            return causal_conv1d(qkv, weight, bias, activation=None, cu_seqlens=cu_seqlens)
        if cache.conv_state is None:
            raise ValueError("cache: has no conv_state, but this attention has a qkv conv (d_conv="
                             f"{self.d_conv}); make the cache with init_cache")
        state = cache.conv_state
        if qkv.shape[1] == 1:
            state.copy_(torch.roll(state, shifts=-1, dims=-1))
            state[:, :, -1] = qkv[:, 0].to(state.dtype)
            dtype = torch.promote_types(qkv.dtype, torch.float32)
            out = (state.to(dtype) * weight.to(dtype)).sum(dim=-1) + bias.to(dtype)
            return out.to(qkv.dtype)[:, None]
        history = torch.cat([state.transpose(1, 2).to(qkv.dtype), qkv], dim=1)
        out = causal_conv1d(history[:, 1:], weight, bias, activation=None)
        state.copy_(history[:, -self.d_conv:].transpose(1, 2))
        return out[:, self.d_conv - 1:]

    def _use_flash(self, q: torch.Tensor) -> bool:
        fits = flash_attn_available() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
        if self.backend == "flash" and not fits:
            raise RuntimeError("backend='flash' needs the flash_attn package and CUDA float16/bfloat16 inputs; "
                               "use backend='auto' to fall back to torch SDPA")
        return self.backend != "sdpa" and fits

    def _flash_window(self) -> tuple[int, int]:
        return (-1, -1) if self.sliding_window is None else (self.sliding_window - 1, 0)

    def _sdpa(self, q, k, v, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """q (batch, lq, n_heads, d), k/v (batch, lk, n_kv_heads, d), mask (lq, lk) bool -> (batch, lq, n_heads, d)."""
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        extra = {}
        if self.n_kv_heads != self.n_heads:
            if _SDPA_HAS_GQA:
                extra["enable_gqa"] = True
            else:
                rep = self.n_heads // self.n_kv_heads
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           scale=self.softmax_scale, **extra)
        return y.transpose(1, 2)

    def _attend(self, q, k, v) -> torch.Tensor:
        """Causal (and windowed) attention within one call: all tensors share positions 0..seqlen-1."""
        if self._use_flash(q):
            return flash_attn_func(q, k, v, softmax_scale=self.softmax_scale, causal=True,
                                   window_size=self._flash_window())
        if self.sliding_window is None:
            return self._sdpa(q, k, v, is_causal=True)
        pos = torch.arange(q.shape[1], device=q.device)
        return self._sdpa(q, k, v, mask=causal_mask(pos, pos, self.sliding_window))

    def _attend_packed(self, q, k, v, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Block-diagonal causal attention over packed sequences (batch 1): flash-attn's varlen kernel; else the
        sequences as the rows of right-padded batches (`packing.length_buckets`: one per power of two of their
        lengths), each through `_attend` (causality keeps a row's padding, at its end, away from its real
        queries; the padded queries' outputs are dropped): at most four times the score entries of the sequences
        alone, in as many SDPA calls as there are such powers."""
        offsets = host_offsets(cu_seqlens)
        lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
        if self._use_flash(q):
            cu = cu_seqlens.to(torch.int32)
            y = flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, max(lengths), max(lengths),
                                       softmax_scale=self.softmax_scale, causal=True,
                                       window_size=self._flash_window())
            return y[None]
        if not any(lengths):
            return q.new_zeros(q.shape)
        buckets = length_buckets(cu_seqlens)
        y = torch.cat([self._attend(q[0][index], k[0][index], v[0][index]).flatten(0, 1)[real]
                       for index, real in zip(buckets.indices, buckets.reals)])
        return (y if buckets.order is None else y[buckets.order])[None]

    def _attend_cached(self, q, k, v, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Attend from this call's tokens to the cached ones and themselves; append k, v to the cache."""
        seqlen, start = q.shape[1], cache.seqlen_offset
        if self.sliding_window is None:
            cache.k[:, start:start + seqlen] = k.to(cache.k.dtype)
            cache.v[:, start:start + seqlen] = v.to(cache.v.dtype)
            keys, values = cache.k[:, :start + seqlen].to(q.dtype), cache.v[:, :start + seqlen].to(q.dtype)
            if self._use_flash(q):
                y = flash_attn_func(q, keys, values, softmax_scale=self.softmax_scale, causal=True)
            else:
                mask = None if seqlen == 1 else causal_mask(positions, torch.arange(start + seqlen, device=q.device),
                                                            None)
                y = self._sdpa(q, keys, values, mask=mask)
        else:
            keys = torch.cat([cache.k.to(q.dtype), k], dim=1)
            values = torch.cat([cache.v.to(q.dtype), v], dim=1)
            key_pos = torch.cat([cache.slot_positions(), positions])
            y = self._sdpa(q, keys, values, mask=causal_mask(positions, key_pos, self.sliding_window))
            kept = min(seqlen, cache.cache_len)
            slots = torch.remainder(positions[-kept:], cache.cache_len)
            cache.k[:, slots] = k[:, -kept:].to(cache.k.dtype)
            cache.v[:, slots] = v[:, -kept:].to(cache.v.dtype)
        cache.seqlen_offset += seqlen
        return y

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, rope={self.rope}, rot_dim={self.rot_dim}, "
                f"sliding_window={self.sliding_window}, d_conv={self.d_conv}, backend={self.backend!r}")
