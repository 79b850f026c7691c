"""Accounting: hand-computed examples per block type, causal averages, state bytes, budgets, the summary table,
and the FLOP formulas against torch.utils.flop_counter.FlopCounterMode on the CPU reference path."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from archspec.accounting import (
    BlockAccounting,
    account,
    attention_flops,
    attention_kv_bytes,
    attention_params,
    attention_state_bytes,
    block_accounting,
    causal_chunk_pairs_per_token,
    causal_keys_per_token,
    format_summary,
    human_bytes,
    human_count,
    human_flops,
    mlp_flops,
    mlp_params,
    ssd_flops,
    ssd_params,
    ssd_state_bytes,
    steps_for_budget,
)
from archspec.builder import build_mixer, build_model
from archspec.spec import AttentionSpec, MLPSpec, SSDSpec

from model_specs import make_spec


def conv_attention_spec():
    """The tiny hybrid with its full attention given mamba_ssm's qkv conv (d_conv 4) and projection biases."""
    base = make_spec()
    blocks = {s: b.model_dump() for s, b in base.blocks.items()}
    blocks["A"].update(d_conv=4, bias=True)
    return make_spec(blocks=blocks)


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------ causal averages
@pytest.mark.parametrize("seq_len", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("window", [None, 1, 3, 16, 100])
def test_causal_keys_per_token_counts_the_mask(seq_len, window):
    mask = torch.ones(seq_len, seq_len).tril()
    if window is not None:
        mask = mask.triu(-(window - 1))
    assert causal_keys_per_token(seq_len, window) == pytest.approx(mask.sum().item() / seq_len, rel=1e-15)


@pytest.mark.parametrize("seq_len,chunk", [(1, 8), (8, 8), (20, 8), (64, 16), (5, 256)])
def test_causal_chunk_pairs_counts_the_block_diagonal_mask(seq_len, chunk):
    t = torch.arange(seq_len)
    same_chunk = (t[:, None] // chunk) == (t[None, :] // chunk)
    mask = same_chunk & (t[None, :] <= t[:, None])
    assert causal_chunk_pairs_per_token(seq_len, chunk) == pytest.approx(mask.sum().item() / seq_len, rel=1e-15)


def test_full_chunks_average_half_the_chunk_plus_one_half():
    assert causal_chunk_pairs_per_token(256 * 4, 256) == 128.5
    assert causal_keys_per_token(2048) == 1024.5


# ------------------------------------------------------------------------------------------ hand-computed blocks
def test_ssd_hand_computed():
    # d_model 16, expand 2 -> d_inner 32, head_dim 32 -> 1 head, d_state 8, 1 group, d_conv 4
    block = SSDSpec(d_state=8, head_dim=32, expand=2, chunk_size=8)
    # in_proj 16 x (2*32 + 2*8 + 1) = 16 x 81; conv 48 x 4 + 48; dt_bias, A_log, D; norm 32; out_proj 32 x 16
    assert ssd_params(block, 16) == 1296 + 240 + 3 + 32 + 512
    flops = ssd_flops(block, 16, seq_len=8)  # one full chunk: (8 + 1) / 2 = 4.5 pairs per token
    assert flops == {"in_proj": 2592.0, "conv": 384.0, "ssd_scores": 72.0, "ssd_mix": 288.0,
                     "ssd_chunk_state": 512.0, "ssd_state_output": 512.0, "out_proj": 1024.0}
    # SSM state 1 x 32 x 8 float32 + conv state 48 channels x 3 previous inputs x 2 bytes
    assert ssd_state_bytes(block, 16, dtype_bytes=2) == 1024 + 288


def test_ssd_options_change_params():
    base = SSDSpec(d_state=8, head_dim=32, ngroups=1)
    assert ssd_params(base.model_copy(update={"bias": True}), 16) == ssd_params(base, 16) + 81 + 16
    assert ssd_params(base.model_copy(update={"conv_bias": False}), 16) == ssd_params(base, 16) - 48
    assert ssd_params(base.model_copy(update={"D_has_hdim": True}), 16) == ssd_params(base, 16) + 31
    assert ssd_params(base.model_copy(update={"rmsnorm": False}), 16) == ssd_params(base, 16) - 32


def test_attention_hand_computed():
    block = AttentionSpec(n_heads=4, n_kv_heads=2)  # head_dim 32 / 4 = 8
    assert attention_params(block, 32) == 32 * 8 * (4 + 4) + 32 * 32
    assert attention_params(block.model_copy(update={"qk_norm": True, "bias": True}), 32) == 3072 + 16 + 64 + 32
    flops = attention_flops(block, 32, seq_len=7)  # (7 + 1) / 2 = 4 keys per query
    assert flops == {"in_proj": 4096.0, "attention_scores": 256.0, "attention_values": 256.0, "out_proj": 2048.0}
    windowed = attention_flops(block.model_copy(update={"sliding_window": 3}), 32, seq_len=7)
    assert windowed["attention_scores"] == pytest.approx(2 * 4 * 8 * 18 / 7)  # keys 1+2+3+3+3+3+3 = 18
    assert attention_kv_bytes(block, 32, seq_len=7, dtype_bytes=2) == 2 * 2 * 8 * 7 * 2
    assert attention_kv_bytes(block.model_copy(update={"sliding_window": 3}), 32, 7, 2) == 2 * 2 * 8 * 3 * 2


def test_attention_with_qkv_conv_hand_computed():
    # mamba_ssm MHA(d_conv=4): qkv_dim = 8 * (4 + 2 * 2) = 64 channels, conv weight 64 x 4 + bias 64
    block = AttentionSpec(n_heads=4, n_kv_heads=2, d_conv=4)
    plain = block.model_copy(update={"d_conv": 0})
    assert attention_params(block, 32) == attention_params(plain, 32) + 64 * 4 + 64
    flops = attention_flops(block, 32, seq_len=7)
    assert flops == {**attention_flops(plain, 32, seq_len=7), "conv": 2 * 4 * 64}
    assert "conv" not in attention_flops(plain, 32, seq_len=7)
    # conv state: 3 previous inputs of 64 channels; constant in seq_len, beside the growing KV cache
    assert attention_state_bytes(block, 32, dtype_bytes=2) == 64 * 3 * 2
    assert attention_state_bytes(plain, 32, dtype_bytes=2) == 0
    assert attention_kv_bytes(block, 32, 7, 2) == attention_kv_bytes(plain, 32, 7, 2)


def test_mlp_hand_computed():
    swiglu = MLPSpec(kind="swiglu")  # 8/3 * 32 = 85 -> 128 (multiple of 64)
    assert mlp_params(swiglu, 32) == 32 * 256 + 128 * 32
    assert mlp_flops(swiglu, 32, seq_len=100) == {"fc1": 16384.0, "fc2": 8192.0}
    gelu = MLPSpec(kind="gelu", hidden_mult=2.0, bias=True)
    assert mlp_params(gelu, 32) == 32 * 64 + 64 + 64 * 32 + 32


@pytest.mark.parametrize("block", [
    SSDSpec(d_state=16, head_dim=32, ngroups=2, D_has_hdim=True, bias=True),
    SSDSpec(d_state=8, head_dim=64, expand=3, conv_bias=False, rmsnorm=False),
    AttentionSpec(n_heads=4, n_kv_heads=1, head_dim=16, qk_norm=True, bias=True),
    AttentionSpec(n_heads=2),
    AttentionSpec(n_heads=4, n_kv_heads=2, head_dim=16, d_conv=4, bias=True),
    AttentionSpec(n_heads=2, d_conv=2, qk_norm=True),
    MLPSpec(kind="gelu", hidden=72, bias=True),
    MLPSpec(kind="swiglu", hidden_mult=3.0, multiple_of=32),
])
def test_block_params_equal_the_built_module(block):
    formulas = block_accounting(block.type)
    assert formulas.params(block, 64) == numel(build_mixer(block, 64, layer_idx=0))


def test_model_account_totals(tiny_spec):
    acc = account(tiny_spec, seq_len=16)
    assert [la.symbol for la in acc.layers] == ["M", "F", "A", "M", "W", "F"]
    assert all(la.params == block_accounting(la.type).params(tiny_spec.blocks[la.symbol], 32) + 32
               for la in acc.layers)
    assert acc.embedding_params == 64 * 32
    assert acc.params == acc.embedding_params + sum(la.params for la in acc.layers) + 32
    assert acc.lm_head_flops_per_token == 2 * 32 * 64
    assert acc.fwd_flops_per_token == pytest.approx(sum(la.fwd_flops_per_token for la in acc.layers) + 4096)
    assert acc.train_flops_per_token == 3 * acc.fwd_flops_per_token
    untied = account(make_spec(tie_embeddings=False), seq_len=16)
    assert untied.params == acc.params + 64 * 32 and untied.embedding_params == 2 * 64 * 32


def test_layernorm_layers_count_the_bias(tiny_spec):
    rms = account(tiny_spec, 8)
    ln = account(make_spec(norm="layernorm"), 8)
    assert ln.params == rms.params + 32 * (len(rms.layers) + 1)


def test_decode_state_bytes_grow_with_kv_and_stop_at_the_window(tiny_spec):
    acc = account(tiny_spec, seq_len=16)
    ssd = ssd_state_bytes(tiny_spec.blocks["M"], 32, 2)
    kv_full = 2 * 2 * 8 * 2  # per token: keys and values, 2 kv heads x head_dim 8, 2 bytes
    kv_win = 2 * 2 * 16 * 2  # per token of the window: 2 heads x head_dim 16
    assert acc.decode_state_bytes() == 2 * ssd + 16 * kv_full + 5 * kv_win
    assert acc.decode_state_bytes(batch=3, seq_len=2) == 3 * (2 * ssd + 2 * kv_full + 2 * kv_win)
    # float32 activations: only the conv state and the KV cache double; the SSM state is float32 already
    conv = 2 * (32 * 2 + 2 * 2 * 16) * 3
    assert acc.decode_state_bytes(dtype_bytes=4) == 2 * acc.decode_state_bytes() - 2 * ssd + conv * 2
    with pytest.raises(ValueError, match="batch"):
        acc.decode_state_bytes(batch=0)


@pytest.mark.parametrize("conv", [False, True], ids=["plain", "attention_conv"])
def test_decode_state_bytes_equal_what_a_bfloat16_model_allocates(tiny_spec, conv):
    # the SSM state stays float32 in a bf16 model; the conv states' extra (d_conv-th) column is not counted
    spec = conv_attention_spec() if conv else tiny_spec
    seq_len = 16
    model = build_model(spec, dtype=torch.bfloat16)
    allocated = 0
    for cache in model.init_caches(batch_size=3, max_seqlen=seq_len):
        if hasattr(cache, "ssm_state"):
            assert cache.ssm_state.dtype == torch.float32
            allocated += cache.ssm_state.nbytes + cache.conv_state[..., 1:].nbytes
        elif cache is not None:
            allocated += cache.k.nbytes + cache.v.nbytes
            if cache.conv_state is not None:
                allocated += cache.conv_state[..., 1:].nbytes
    acc = account(spec, seq_len)
    assert acc.decode_state_bytes(batch=3, dtype_bytes=2) == allocated
    conv_layers = [la for la in acc.layers if la.type == "attention" and la.state_bytes]
    assert len(conv_layers) == (1 if conv else 0)


def test_steps_for_budget_spends_whole_steps(tiny_spec):
    per_step = account(tiny_spec, 32).train_flops_per_token * 4 * 32
    assert steps_for_budget(tiny_spec, 10 * per_step, batch_size=4, seq_len=32) == 10
    assert steps_for_budget(tiny_spec, 10.99 * per_step, batch_size=4, seq_len=32) == 10
    assert steps_for_budget(tiny_spec, 0.1 * per_step, batch_size=4, seq_len=32) == 1
    with pytest.raises(ValueError, match="budget_flops"):
        steps_for_budget(tiny_spec, -1.0, 4, 32)
    with pytest.raises(ValueError, match="batch_size"):
        steps_for_budget(tiny_spec, 1e12, 0, 32)


def test_bad_arguments_name_themselves(tiny_spec):
    with pytest.raises(ValueError, match="seq_len"):
        account(tiny_spec, 0)
    with pytest.raises(ValueError, match="type_name"):
        block_accounting("nope")
    with pytest.raises(ValueError, match="head_dim"):
        ssd_params(SSDSpec(head_dim=48), 32)  # d_inner 64 is no multiple of 48


def test_human_units():
    assert human_count(512) == "512"
    assert human_count(1234) == "1.2K"
    assert human_count(2.7e9) == "2.7B"
    assert human_flops(3.4e9) == "3.4 GFLOP"
    assert human_bytes(12800) == "12.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"


def test_format_summary_lists_every_layer_and_the_totals(tiny_spec):
    acc = account(tiny_spec, 16)
    text = format_summary(tiny_spec, acc)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["layer", "sym", "type"]
    for la in acc.layers:
        assert any(line.split()[:3] == [str(la.index), la.symbol, la.type] for line in lines)
    total = next(line for line in lines if line.startswith("total"))
    assert human_count(acc.params) in total and human_flops(acc.fwd_flops_per_token) in total
    assert f"{acc.params:,}" in text


# ------------------------------------------------------------------------------------------ FlopCounterMode
def counted(fn, *args) -> int:
    """Matmul/bmm/conv FLOPs that FlopCounterMode sees (SDPA forced to the math path so its bmm are visible:
    the CPU flash kernel is not in the counter's table)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops()


def counter_view(block, d_model: int, batch: int, seq_len: int) -> float:
    """What FlopCounterMode should report for one mixer forward over (batch, seq_len), from our per-token
    formulas: the counter sees every product unmasked (full seq_len x seq_len attention, full chunk x chunk SSD
    products over zero-padded chunks) and the conv over its d_conv - 1 padded outputs too, so each masked term
    is scaled back by the known masking factor."""
    flops = block_accounting(block.type).flops(block, d_model, seq_len)
    tokens = batch * seq_len
    if block.type == "mlp":
        return tokens * (flops["fc1"] + flops["fc2"])
    linear = tokens * (flops["in_proj"] + flops["out_proj"])
    conv = flops.get("conv", 0.0) * batch * (seq_len + block.d_conv - 1)
    t = torch.arange(seq_len)
    causal = t[None, :] <= t[:, None]
    if block.type == "attention":
        window = seq_len if block.sliding_window is None else block.sliding_window
        keys = (causal & (t[None, :] > t[:, None] - window)).sum().item() / seq_len  # masked keys per query
        return linear + conv + tokens * (flops["attention_scores"] + flops["attention_values"]) * seq_len / keys
    q = block.chunk_size
    padded = batch * math.ceil(seq_len / q) * q
    pairs = (causal & (t[None, :] // q == t[:, None] // q)).sum().item() / seq_len  # masked pairs per token
    return (linear + conv + padded * (flops["ssd_scores"] + flops["ssd_mix"]) * q / pairs
            + padded * (flops["ssd_chunk_state"] + flops["ssd_state_output"]))


@pytest.mark.parametrize("block", [
    MLPSpec(kind="swiglu"), MLPSpec(kind="gelu", hidden=80, bias=True),
    AttentionSpec(n_heads=4, backend="sdpa"),
    AttentionSpec(n_heads=4, n_kv_heads=2, head_dim=16, backend="sdpa"),
    AttentionSpec(n_heads=2, sliding_window=5, backend="sdpa"),
    AttentionSpec(n_heads=4, n_kv_heads=2, head_dim=16, d_conv=4, bias=True, backend="sdpa"),
    AttentionSpec(n_heads=2, sliding_window=5, d_conv=3, backend="sdpa"),
    SSDSpec(d_state=16, head_dim=32, chunk_size=8, backend="torch"),
    SSDSpec(d_state=32, head_dim=32, ngroups=2, expand=4, d_conv=3, chunk_size=16, backend="torch"),
])
@pytest.mark.parametrize("seq_len", [16, 21])
def test_flop_formulas_match_flop_counter(block, seq_len):
    mixer = build_mixer(block, 32, layer_idx=0)
    x = torch.randn(2, seq_len, 32)
    expected = counter_view(block, 32, batch=2, seq_len=seq_len)
    # exact up to float rounding of the masking factor
    assert counted(mixer, x) == pytest.approx(expected, rel=1e-12)


def test_linear_parts_match_flop_counter_exactly():
    block = SSDSpec(d_state=16, head_dim=32, chunk_size=8, backend="torch")
    mixer = build_mixer(block, 32, layer_idx=0)
    flops = ssd_flops(block, 32, seq_len=10)
    u = torch.randn(3, 10, 32)
    assert counted(mixer.in_proj, u) == 30 * flops["in_proj"]
    assert counted(mixer.out_proj, torch.randn(3, 10, 64)) == 30 * flops["out_proj"]


@pytest.mark.parametrize("conv", [False, True], ids=["plain", "attention_conv"])
def test_whole_model_matches_flop_counter(tiny_spec, conv):
    tiny_spec = conv_attention_spec() if conv else tiny_spec
    model = build_model(tiny_spec)
    batch, seq_len = 2, 24
    ids = torch.randint(0, tiny_spec.vocab_size, (batch, seq_len))
    acc = account(tiny_spec, seq_len)
    layers = sum(counter_view(tiny_spec.blocks[s], 32, batch, seq_len) for s in model.layer_symbols)
    head = batch * seq_len * acc.lm_head_flops_per_token
    assert counted(model, ids) == pytest.approx(layers + head, rel=1e-12)
    assert counted(model.lm_head, torch.randn(batch, seq_len, 32)) == head


def test_wrong_masking_would_be_caught():
    # the unmasked count differs from the masked one by more than the test tolerance, so a formula that forgot
    # the causal mask (or applied it twice) fails test_flop_formulas_match_flop_counter
    block = AttentionSpec(n_heads=4, backend="sdpa")
    f = attention_flops(block, 32, 16)
    unmasked = dict(f, attention_scores=2 * 4 * 8 * 16, attention_values=2 * 4 * 8 * 16)
    assert sum(unmasked.values()) / sum(f.values()) > 1.01


def test_user_block_types_get_accounting_by_registration():
    from archspec.accounting import _ACCOUNTING, register_block_accounting

    register_block_accounting("toy", BlockAccounting(params=lambda b, d: 7, flops=lambda b, d, l: {"x": 1.0}))
    try:
        assert block_accounting("toy").params(None, 8) == 7
        with pytest.raises(ValueError, match="already"):
            register_block_accounting("toy", BlockAccounting(params=lambda b, d: 0, flops=lambda b, d, l: {}))
    finally:
        _ACCOUNTING.pop("toy")
