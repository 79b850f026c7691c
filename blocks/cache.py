"""Decode caches of the mixers (made by their `init_cache`, updated in place by their `forward`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Mamba2Cache:
    """Recurrent state of one Mamba2Mixer.

    conv_state: (batch, conv_dim, d_conv), the last d_conv inputs of the depthwise conv (oldest first), in the
        conv weight's dtype; zeros at the start (the same as the causal zero padding).
    ssm_state: (batch, nheads, headdim, d_state) float32, the SSM hidden state h.
    seqlen_offset: number of tokens consumed so far.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor
    seqlen_offset: int = 0


@dataclass
class KVCache:
    """Key/value cache of one Attention layer.

    k, v: (batch, cache_len, n_kv_heads, head_dim), keys stored after RoPE (and qk-norm).
    Without a sliding window cache_len = max_seqlen and token t sits in slot t. With a sliding window of w
    tokens cache_len = min(w, max_seqlen) and the cache is a ring buffer: token t sits in slot t % cache_len.
    max_seqlen: the most tokens the cache accepts in total.
    seqlen_offset: number of tokens consumed so far (the position of the next token).
    conv_state: with a qkv conv (d_conv > 0), (batch, qkv_dim, d_conv): the last d_conv conv *inputs* (the
        in_proj outputs, oldest first; zeros before the first token, the same as the causal zero padding), in
        the cache dtype, as Mamba2Cache keeps its conv state; None without a conv.
    """

    k: torch.Tensor
    v: torch.Tensor
    max_seqlen: int
    seqlen_offset: int = 0
    conv_state: Optional[torch.Tensor] = None

    @property
    def cache_len(self) -> int:
        return self.k.shape[1]

    def slot_positions(self) -> torch.Tensor:
        """(cache_len,) int64: the absolute position held by each slot of a ring buffer, -1 where empty."""
        slots = torch.arange(self.cache_len, device=self.k.device)
        last = self.seqlen_offset - 1
        pos = last - torch.remainder(last - slots, self.cache_len)
        return torch.where(pos >= 0, pos, torch.full_like(pos, -1))
