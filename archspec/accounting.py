"""Parameters, FLOPs per token, decode state and KV-cache bytes of a model spec: pure arithmetic, no torch.

Conventions (DESIGN.md): a multiply-add is 2 FLOPs; a matmul of an ``in``-vector by an ``in x out`` matrix is
``2 * in * out`` FLOPs per token; training costs 3 x the forward (backward = 2 x forward). Only matmul-like
work is counted: the linear layers, the depthwise convolution, the attention score/value products and the SSD
products. Norms, activations, softmax, RoPE, the SSD decay/``exp``/``cumsum``/gating/``D`` skip, bias adds,
the residual adds and the SSD inter-chunk state passing (one multiply-add per state entry per chunk, i.e.
``2 * nheads * head_dim * d_state / chunk_size`` per token) are elementwise and ignored. The embedding is a
lookup (0 FLOPs). Every per-token figure of a causal product is the average over the positions of one
``seq_len``-long sequence.

Each layer of the stack is one pre-norm residual block ``x + mixer(norm(x))``; its parameter count includes
its norm (``d_model`` weights for RMSNorm, ``2 * d_model`` with the LayerNorm bias).

Activation checkpointing (``training.activation_checkpointing``) recomputes every layer's forward during
backward, which costs about one more forward of the layers (not of the LM head) in time. Training FLOPs stay
3 x forward regardless (model FLOPs, not hardware FLOPs): a budget buys the same steps, tokens and losses with
the setting on or off, so runs and searches stay comparable; ``ModelAccount.recompute_flops_per_token`` gives
the extra work for throughput figures.

User block types registered with ``archspec.spec.register_block_spec`` get accounting through
``register_block_accounting``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from archspec.layout import expand_layout
from archspec.spec import AttentionSpec, MLPSpec, ModelSpec, SSDSpec

SSM_STATE_BYTES = 4  # Mamba2Cache keeps h in float32 whatever the activation dtype (mamba_ssm: the model dtype)


# --------------------------------------------------------------------------------------------- causal averages
def causal_keys_per_token(seq_len: int, window: Optional[int] = None) -> float:
    """Average number of keys a query attends to in a causal ``seq_len``-long sequence.

    The query at position t (0-based) sees ``min(t + 1, window)`` keys (itself and up to ``window - 1`` before it;
    all ``t + 1`` without a window). Sum over t, divided by seq_len: ``(seq_len + 1) / 2`` without a window,
    ``(w (w + 1) / 2 + (seq_len - w) w) / seq_len`` with a window ``w < seq_len``.
    """
    _check_positive("seq_len", seq_len)
    w = seq_len if window is None else min(window, seq_len)
    pairs = w * (w + 1) // 2 + (seq_len - w) * w
    return pairs / seq_len


def causal_chunk_pairs_per_token(seq_len: int, chunk_size: int) -> float:
    """Average number of earlier-or-equal positions of the same chunk, per token, for SSD's chunked form.

    The sequence is cut into ``seq_len // Q`` full chunks of Q = chunk_size tokens and one partial chunk of
    ``r = seq_len % Q`` tokens. Position i (0-based) of a chunk pairs with i + 1 positions (j <= i), so a chunk
    of q tokens has ``q (q + 1) / 2`` pairs; the average is ``(Q + 1) / 2`` when Q divides seq_len.
    """
    _check_positive("seq_len", seq_len)
    _check_positive("chunk_size", chunk_size)
    full, rest = divmod(seq_len, chunk_size)
    pairs = full * chunk_size * (chunk_size + 1) // 2 + rest * (rest + 1) // 2
    return pairs / seq_len


# --------------------------------------------------------------------------------------------- per block type
def norm_params(kind: str, d_model: int) -> int:
    """Parameters of one pre-norm: RMSNorm has a weight (d_model), LayerNorm a weight and a bias."""
    if kind == "rmsnorm":
        return d_model
    if kind == "layernorm":
        return 2 * d_model
    raise ValueError(f"kind: expected 'rmsnorm' or 'layernorm', got {kind!r}")


def _linear_params(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


@dataclass(frozen=True)
class SSDDims:
    """Derived sizes of a Mamba-2 mixer: d_inner = expand * d_model, nheads = d_inner / head_dim,
    conv_dim = d_inner + 2 * ngroups * d_state, d_in_proj = 2 * d_inner + 2 * ngroups * d_state + nheads."""

    d_inner: int
    nheads: int
    conv_dim: int
    d_in_proj: int

    @staticmethod
    def of(block: SSDSpec, d_model: int) -> SSDDims:
        d_inner = block.expand * d_model
        if d_inner % block.head_dim:
            raise ValueError(f"head_dim: expected a divisor of d_inner = expand * d_model = {d_inner}, "
                             f"got {block.head_dim}")
        nheads = d_inner // block.head_dim
        if nheads % block.ngroups:
            raise ValueError(f"ngroups: expected a divisor of nheads = {nheads}, got {block.ngroups}")
        gs = block.ngroups * block.d_state
        return SSDDims(d_inner, nheads, d_inner + 2 * gs, 2 * d_inner + 2 * gs + nheads)


def ssd_params(block: SSDSpec, d_model: int) -> int:
    """Mamba2Mixer parameters: in_proj, depthwise conv1d (conv_dim x d_conv + bias), dt_bias, A_log, D
    (nheads, or d_inner with D_has_hdim), the gated RMSNorm weight (d_inner) and out_proj."""
    s = SSDDims.of(block, d_model)
    conv = s.conv_dim * block.d_conv + (s.conv_dim if block.conv_bias else 0)
    per_head = 2 * s.nheads + (s.d_inner if block.D_has_hdim else s.nheads)
    norm = s.d_inner if block.rmsnorm else 0
    return (_linear_params(d_model, s.d_in_proj, block.bias) + conv + per_head + norm
            + _linear_params(s.d_inner, d_model, block.bias))


def ssd_flops(block: SSDSpec, d_model: int, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token of a Mamba2Mixer, by component, at ``seq_len`` (N = d_state, P = head_dim,
    H = nheads, G = ngroups, Q = chunk_size).

    - in_proj: ``2 * d_model * d_in_proj``; out_proj: ``2 * d_inner * d_model``.
    - conv: depthwise causal conv, one multiply-add per tap and channel: ``2 * d_conv * conv_dim``.
    - The chunked SSD algorithm, per chunk of Q tokens:
      1. ssd_scores: ``C B^T`` within the chunk, one (Q x N) (N x Q) product per group. Only the causal half
         (j <= i) is needed: position i costs ``2 * N`` per earlier-or-equal position, per group:
         ``2 * G * N * pairs`` per token, pairs = ``causal_chunk_pairs_per_token`` (= (Q + 1) / 2).
      2. ssd_mix: ``(L o C B^T) x``, the masked (Q x Q) scores times the chunk's (Q x P) inputs, per head,
         again causal: ``2 * H * P * pairs`` per token.
      3. ssd_chunk_state: the chunk's end state ``B^T (decay * x)``, (N x Q)(Q x P) per head; every token
         contributes (no mask): ``2 * H * P * N`` per token.
      4. ssd_state_output: the output of the state entering the chunk, ``C h`` ((1 x N)(N x P) per head and
         token): ``2 * H * P * N`` per token.
    """
    s = SSDDims.of(block, d_model)
    pairs = causal_chunk_pairs_per_token(seq_len, block.chunk_size)
    state = 2 * s.nheads * block.head_dim * block.d_state
    return {
        "in_proj": 2.0 * d_model * s.d_in_proj,
        "conv": 2.0 * block.d_conv * s.conv_dim,
        "ssd_scores": 2.0 * block.ngroups * block.d_state * pairs,
        "ssd_mix": 2.0 * s.nheads * block.head_dim * pairs,
        "ssd_chunk_state": float(state),
        "ssd_state_output": float(state),
        "out_proj": 2.0 * s.d_inner * d_model,
    }


def ssd_state_bytes(block: SSDSpec, d_model: int, dtype_bytes: int) -> int:
    """Decode state of one sequence: the SSM state ``nheads * head_dim * d_state`` in float32 (4 bytes, as
    archspec's Mamba2Cache keeps it; mamba_ssm allocates it in the model dtype) plus the conv state, the
    ``d_conv - 1`` previous inputs of each of the conv_dim channels in the activation dtype:
    ``conv_dim * (d_conv - 1) * dtype_bytes``. (Mamba2Cache, like mamba_ssm's cache, allocates ``d_conv``
    columns, one more per channel than the recurrence needs; that slot is not counted.)"""
    s = SSDDims.of(block, d_model)
    return (s.nheads * block.head_dim * block.d_state * SSM_STATE_BYTES
            + s.conv_dim * (block.d_conv - 1) * dtype_bytes)


def _attention_dims(block: AttentionSpec, d_model: int) -> tuple[int, int, int]:
    """(n_heads, n_kv_heads, head_dim) with the defaults filled in."""
    if block.head_dim is None and d_model % block.n_heads:
        raise ValueError(f"n_heads: expected a divisor of d_model={d_model} when head_dim is not given, "
                         f"got {block.n_heads}")
    head_dim = block.head_dim if block.head_dim is not None else d_model // block.n_heads
    n_kv = block.n_kv_heads if block.n_kv_heads is not None else block.n_heads
    return block.n_heads, n_kv, head_dim


def attention_params(block: AttentionSpec, d_model: int) -> int:
    """Attention parameters: fused in_proj (d_model -> qkv_dim = head_dim * (n_heads + 2 n_kv_heads)), out_proj
    (n_heads * head_dim -> d_model), the q_norm / k_norm weights (head_dim each) with qk_norm, and with
    d_conv > 0 the depthwise qkv conv: ``qkv_dim * d_conv`` weights + ``qkv_dim`` biases."""
    h, kv, hd = _attention_dims(block, d_model)
    qkv_dim = hd * (h + 2 * kv)
    qk = 2 * hd if block.qk_norm else 0
    conv = qkv_dim * (block.d_conv + 1) if block.d_conv else 0
    return (_linear_params(d_model, qkv_dim, block.bias) + conv + _linear_params(h * hd, d_model, block.bias)
            + qk)


def attention_flops(block: AttentionSpec, d_model: int, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token of causal attention, by component, at ``seq_len``.

    - in_proj: ``2 * d_model * head_dim * (n_heads + 2 n_kv_heads)``; out_proj: ``2 * n_heads * head_dim * d_model``.
    - conv (only with d_conv > 0): the depthwise causal conv over the qkv_dim = head_dim * (n_heads + 2 n_kv_heads)
      channels, one multiply-add per tap and channel: ``2 * d_conv * qkv_dim`` (as the SSD conv).
    - attention_scores (``q k^T``) and attention_values (``softmax(.) v``): each ``2 * n_heads * head_dim`` per
      attended key, with the causal mask (and the sliding-window cap): ``2 * n_heads * head_dim * keys`` where
      keys = ``causal_keys_per_token`` = (seq_len + 1) / 2 without a window. GQA shares K/V but not this work.
    """
    h, kv, hd = _attention_dims(block, d_model)
    keys = causal_keys_per_token(seq_len, block.sliding_window)
    flops = {"in_proj": 2.0 * d_model * hd * (h + 2 * kv)}
    if block.d_conv:
        flops["conv"] = 2.0 * block.d_conv * hd * (h + 2 * kv)
    flops.update({
        "attention_scores": 2.0 * h * hd * keys,
        "attention_values": 2.0 * h * hd * keys,
        "out_proj": 2.0 * h * hd * d_model,
    })
    return flops


def attention_state_bytes(block: AttentionSpec, d_model: int, dtype_bytes: int) -> int:
    """Decode state of one sequence that does not grow with its length: with d_conv > 0 the qkv conv state, the
    ``d_conv - 1`` previous conv inputs of each of the qkv_dim channels: ``qkv_dim * (d_conv - 1) * dtype_bytes``
    (the cache, like Mamba2Cache and mamba_ssm's MHA, allocates ``d_conv`` columns; the extra one is not
    counted, as for the SSD conv state). 0 without a conv."""
    if not block.d_conv:
        return 0
    h, kv, hd = _attention_dims(block, d_model)
    return hd * (h + 2 * kv) * (block.d_conv - 1) * dtype_bytes


def attention_kv_bytes(block: AttentionSpec, d_model: int, seq_len: int, dtype_bytes: int) -> int:
    """KV cache of one sequence after seq_len tokens: ``2 * n_kv_heads * head_dim * min(seq_len, window) *
    dtype_bytes`` (keys and values; a sliding window keeps only its last ``window`` tokens)."""
    _, kv, hd = _attention_dims(block, d_model)
    kept = seq_len if block.sliding_window is None else min(seq_len, block.sliding_window)
    return 2 * kv * hd * kept * dtype_bytes


def mlp_params(block: MLPSpec, d_model: int) -> int:
    """MLP parameters: fc1 (d_model -> 2 * hidden for SwiGLU, hidden for GELU) and fc2 (hidden -> d_model)."""
    hidden = block.hidden_size(d_model)
    width = 2 * hidden if block.kind == "swiglu" else hidden
    return _linear_params(d_model, width, block.bias) + _linear_params(hidden, d_model, block.bias)


def mlp_flops(block: MLPSpec, d_model: int, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token of the MLP: fc1 ``2 * d_model * (2 hidden | hidden)``, fc2 ``2 * hidden * d_model``
    (independent of seq_len; the SiLU gate / GELU is elementwise and ignored)."""
    hidden = block.hidden_size(d_model)
    width = 2 * hidden if block.kind == "swiglu" else hidden
    return {"fc1": 2.0 * d_model * width, "fc2": 2.0 * hidden * d_model}


@dataclass(frozen=True)
class BlockAccounting:
    """The formulas of one block type (all per sequence; d_model the model width).

    params(block, d_model) -> int: the mixer's parameters (the layer's norm is added by `account`);
    flops(block, d_model, seq_len) -> {component: forward FLOPs per token};
    state_bytes(block, d_model, dtype_bytes) -> int: decode state independent of the sequence length;
    kv_bytes(block, d_model, seq_len, dtype_bytes) -> int: decode state that grows with the sequence.
    """

    params: Callable[..., int]
    flops: Callable[..., dict[str, float]]
    state_bytes: Callable[..., int] = lambda block, d_model, dtype_bytes: 0
    kv_bytes: Callable[..., int] = lambda block, d_model, seq_len, dtype_bytes: 0


_ACCOUNTING: dict[str, BlockAccounting] = {
    "ssd": BlockAccounting(ssd_params, ssd_flops, state_bytes=ssd_state_bytes),
    "attention": BlockAccounting(attention_params, attention_flops, state_bytes=attention_state_bytes,
                                 kv_bytes=attention_kv_bytes),
    "mlp": BlockAccounting(mlp_params, mlp_flops),
}


def register_block_accounting(type_name: str, accounting: BlockAccounting, *, replace: bool = False) -> None:
    """Give a user block type (its spec's ``type``) its formulas; ValueError if the name is taken and not replace."""
    if not isinstance(accounting, BlockAccounting):
        raise ValueError(f"accounting: expected a BlockAccounting, got {type(accounting).__name__}")
    if type_name in _ACCOUNTING and not replace:
        raise ValueError(f"type_name: {type_name!r} already has accounting; pass replace=True to override it")
    _ACCOUNTING[type_name] = accounting


def block_accounting(type_name: str) -> BlockAccounting:
    """The formulas of a block type; ValueError naming the known types when there are none."""
    try:
        return _ACCOUNTING[type_name]
    except KeyError:
        raise ValueError(f"type_name: no accounting for block type {type_name!r}; known: {sorted(_ACCOUNTING)} "
                         "(add one with register_block_accounting)") from None


# --------------------------------------------------------------------------------------------- whole model
@dataclass(frozen=True)
class LayerAccount:
    """One layer (a pre-norm residual block). params include the norm; fwd_flops_per_token is the sum of
    ``flops`` (forward FLOPs per token at the account's seq_len); state_bytes / kv_bytes are for one sequence
    at the account's dtype_bytes and seq_len."""

    index: int
    symbol: str
    type: str
    params: int
    fwd_flops_per_token: float
    state_bytes: int
    kv_bytes: int
    flops: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelAccount:
    """Accounting of a whole model at one sequence length.

    params: all parameters, a tied embedding/LM head counted once (= sum(p.numel()) of the built model);
    embedding_params: the input embedding plus, when untied, the LM head (padded_vocab x d_model each);
    non_embedding_params: the rest (layers and the final norm);
    lm_head_flops_per_token: ``2 * d_model * padded_vocab``;
    fwd_flops_per_token: layers + LM head; train_flops_per_token: 3 x forward (with or without activation
    checkpointing); recompute_flops_per_token: the forward of the layers again when the spec checkpoints them.
    """

    spec: ModelSpec
    seq_len: int
    dtype_bytes: int
    layers: list[LayerAccount]
    params: int
    embedding_params: int
    non_embedding_params: int
    final_norm_params: int
    lm_head_flops_per_token: float
    fwd_flops_per_token: float

    @property
    def train_flops_per_token(self) -> float:
        """Forward + backward: 3 x the forward FLOPs per token."""
        return 3.0 * self.fwd_flops_per_token

    @property
    def recompute_flops_per_token(self) -> float:
        """FLOPs per token that activation checkpointing adds on top of ``train_flops_per_token``: the layers'
        forward once more when ``spec.training.activation_checkpointing`` is on, else 0. Not part of budgets."""
        if not self.spec.training.activation_checkpointing:
            return 0.0
        return sum(layer.fwd_flops_per_token for layer in self.layers)

    def decode_state_bytes(self, batch: int = 1, dtype_bytes: int = 2, seq_len: Optional[int] = None) -> int:
        """Bytes of decode state for ``batch`` sequences after ``seq_len`` tokens (default: the account's):
        each SSD layer's SSM (float32) + conv state, constant in seq_len, plus each attention layer's KV cache,
        growing with seq_len up to its sliding window (and its qkv conv state, constant, when it has a conv).
        dtype_bytes: the activation/cache dtype's size."""
        _check_positive("batch", batch)
        _check_positive("dtype_bytes", dtype_bytes)
        seq_len = self.seq_len if seq_len is None else seq_len
        _check_positive("seq_len", seq_len)
        total = 0
        for layer in self.layers:
            formulas = block_accounting(layer.type)
            block = self.spec.blocks[layer.symbol]
            total += formulas.state_bytes(block, self.spec.d_model, dtype_bytes)
            total += formulas.kv_bytes(block, self.spec.d_model, seq_len, dtype_bytes)
        return batch * total


def account(spec: ModelSpec, seq_len: int, *, dtype_bytes: int = 2) -> ModelAccount:
    """Parameters, forward FLOPs per token at ``seq_len`` and decode state (one sequence, ``dtype_bytes`` per
    activation element) of every layer of ``spec`` and of the whole model."""
    _check_positive("seq_len", seq_len)
    _check_positive("dtype_bytes", dtype_bytes)
    d = spec.d_model
    layer_norm = norm_params(spec.norm, d)
    layers = []
    for index, symbol in enumerate(expand_layout(spec)):
        block = spec.blocks[symbol]
        formulas = block_accounting(block.type)
        flops = formulas.flops(block, d, seq_len)
        layers.append(LayerAccount(
            index=index, symbol=symbol, type=block.type,
            params=formulas.params(block, d) + layer_norm,
            fwd_flops_per_token=sum(flops.values()),
            state_bytes=formulas.state_bytes(block, d, dtype_bytes),
            kv_bytes=formulas.kv_bytes(block, d, seq_len, dtype_bytes),
            flops=flops,
        ))
    vocab = spec.padded_vocab_size
    embedding = vocab * d * (1 if spec.tie_embeddings else 2)
    final_norm = norm_params(spec.norm, d)
    non_embedding = sum(layer.params for layer in layers) + final_norm
    lm_head = 2.0 * d * vocab
    return ModelAccount(
        spec=spec, seq_len=seq_len, dtype_bytes=dtype_bytes, layers=layers,
        params=embedding + non_embedding, embedding_params=embedding, non_embedding_params=non_embedding,
        final_norm_params=final_norm, lm_head_flops_per_token=lm_head,
        fwd_flops_per_token=sum(layer.fwd_flops_per_token for layer in layers) + lm_head,
    )


def steps_for_budget(spec: ModelSpec, budget_flops: float, batch_size: int, seq_len: int) -> int:
    """Optimizer steps that spend ``budget_flops`` training FLOPs: ``floor(budget / (train_flops_per_token *
    batch_size * seq_len))``, at least 1. batch_size: sequences per optimizer step (after accumulation)."""
    if not budget_flops > 0 or not math.isfinite(budget_flops):
        raise ValueError(f"budget_flops: expected a positive finite number, got {budget_flops}")
    _check_positive("batch_size", batch_size)
    per_step = account(spec, seq_len).train_flops_per_token * batch_size * seq_len
    steps = budget_flops / per_step
    # a budget meant as an exact multiple of the step cost must not lose a step to rounding
    return max(1, math.floor(steps * (1 + 1e-12)))


# --------------------------------------------------------------------------------------------- summary table
def _human(value: float, units: list[str], base: float, suffix_space: bool) -> str:
    sep = " " if suffix_space else ""
    for unit in units[:-1]:
        if abs(value) < base:
            return f"{value:.0f}{sep}{unit}" if unit == units[0] else f"{value:.1f}{sep}{unit}"
        value /= base
    return f"{value:.1f}{sep}{units[-1]}"


def human_count(n: float) -> str:
    """1234 -> '1.2K', 3.4e6 -> '3.4M', 7e9 -> '7.0B'."""
    return _human(n, ["", "K", "M", "B", "T"], 1000.0, suffix_space=False)


def human_flops(n: float) -> str:
    """3.4e9 -> '3.4 GFLOP'."""
    return _human(n, ["FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP"], 1000.0, suffix_space=True)


def human_bytes(n: float) -> str:
    """12800 -> '12.5 KiB'."""
    return _human(n, ["B", "KiB", "MiB", "GiB", "TiB"], 1024.0, suffix_space=True)


def format_summary(spec: ModelSpec, acc: ModelAccount) -> str:
    """A text table: one row per layer (index, symbol, type, params, forward FLOPs/token, decode state bytes,
    KV bytes at the account's seq_len), then the embedding, final norm and LM head rows, then totals."""
    header = ("layer", "sym", "type", "params", "FLOPs/token", "state", "KV cache")
    rows: list[tuple[str, ...]] = [
        (str(la.index), la.symbol, la.type, human_count(la.params), human_flops(la.fwd_flops_per_token),
         human_bytes(la.state_bytes) if la.state_bytes else "-", human_bytes(la.kv_bytes) if la.kv_bytes else "-")
        for la in acc.layers
    ]
    tied = "tied" if spec.tie_embeddings else "untied"
    rows.append(("emb", "", f"embedding ({tied})", human_count(acc.embedding_params), "-", "-", "-"))
    rows.append(("norm_f", "", spec.norm, human_count(acc.final_norm_params), "-", "-", "-"))
    rows.append(("head", "", f"lm_head {spec.padded_vocab_size}", "-", human_flops(acc.lm_head_flops_per_token),
                 "-", "-"))
    state = sum(la.state_bytes for la in acc.layers)
    kv = sum(la.kv_bytes for la in acc.layers)
    rows.append(("total", "", f"{len(acc.layers)} layers", human_count(acc.params),
                 human_flops(acc.fwd_flops_per_token), human_bytes(state), human_bytes(kv)))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        left = {0, 1, 2}
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    body = [line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])]
    notes = [
        f"{spec.name}: d_model {spec.d_model}, vocab {spec.vocab_size} (padded {spec.padded_vocab_size}), "
        f"seq_len {acc.seq_len}",
        f"params {acc.params:,} ({human_count(acc.params)}; non-embedding {human_count(acc.non_embedding_params)})",
        f"forward {human_flops(acc.fwd_flops_per_token)}/token, training {human_flops(acc.train_flops_per_token)}"
        f"/token (3 x forward)",
        f"decode state per sequence at seq_len {acc.seq_len}, {acc.dtype_bytes}-byte activations: "
        f"{human_bytes(acc.decode_state_bytes(dtype_bytes=acc.dtype_bytes))} (SSM state float32)",
    ]
    return "\n".join(body + [""] + notes)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
