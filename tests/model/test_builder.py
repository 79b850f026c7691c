"""The built LanguageModel: names, shapes, init, tying, padding, causality, decoding, packing, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from model_specs import make_spec

from archspec.accounting import account
from archspec.blocks import Attention, Mamba2Mixer, MLP, ResidualBlock
from archspec.builder import LanguageModel, build_model
from archspec.kernels import offsets


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_ids(spec, batch: int, seqlen: int) -> torch.Tensor:
    return torch.randint(0, spec.vocab_size, (batch, seqlen))


def test_module_tree_follows_mamba_ssm_names(tiny_spec):
    model = build_model(tiny_spec)
    assert isinstance(model, LanguageModel)
    assert model.layer_symbols == ["M", "F", "A", "M", "W", "F"]
    kinds = [Mamba2Mixer, MLP, Attention, Mamba2Mixer, Attention, MLP]
    for layer, kind in zip(model.backbone.layers, kinds):
        assert isinstance(layer, ResidualBlock) and isinstance(layer.mixer, kind)
    keys = set(model.state_dict())
    for key in ["backbone.embedding.weight", "backbone.layers.0.norm.weight", "backbone.layers.0.mixer.in_proj.weight",
                "backbone.layers.0.mixer.conv1d.weight", "backbone.layers.0.mixer.A_log",
                "backbone.layers.0.mixer.dt_bias", "backbone.layers.0.mixer.D", "backbone.layers.0.mixer.norm.weight",
                "backbone.layers.1.mixer.fc1.weight", "backbone.layers.2.mixer.in_proj.weight",
                "backbone.layers.4.mixer.q_norm.weight", "backbone.norm_f.weight", "lm_head.weight"]:
        assert key in keys, key
    assert model.backbone.layers[2].mixer.layer_idx == 2


def test_params_equal_accounting(tiny_spec):
    for spec in [tiny_spec, make_spec(tie_embeddings=False), make_spec(norm="layernorm")]:
        assert params(build_model(spec)) == account(spec, 16).params


def test_forward_gives_padded_vocab_logits(tiny_spec):
    model = build_model(tiny_spec)
    logits = model(random_ids(tiny_spec, 3, 11))
    assert logits.shape == (3, 11, 64) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_bfloat16_build_keeps_D_in_float32(tiny_spec):
    model = build_model(tiny_spec, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.backbone.layers[0].mixer.D.dtype == torch.float32
    logits = model(random_ids(tiny_spec, 1, 9))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_meta_device_allocates_nothing(tiny_spec):
    model = build_model(tiny_spec, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert params(model) == account(tiny_spec, 8).params


def test_tied_embeddings_share_storage(tiny_spec):
    tied = build_model(tiny_spec)
    assert tied.lm_head.weight is tied.backbone.embedding.weight
    with torch.no_grad():
        tied.backbone.embedding.weight[3, 0] = 123.0
    assert tied.lm_head.weight[3, 0].item() == 123.0
    untied = build_model(make_spec(tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.backbone.embedding.weight.data_ptr()


def test_init_follows_mamba_ssm(tiny_spec):
    torch.manual_seed(0)
    spec = make_spec(d_model=256, init_std=0.05, blocks={
        "M": {"type": "ssd", "d_state": 16, "head_dim": 64, "A_init_range": [2.0, 4.0]},
        "F": {"type": "mlp", "hidden": 512, "bias": True}}, layout=["M", "F"] * 2)
    model = build_model(spec)
    n_layers = 4
    assert model.backbone.embedding.weight.std().item() == pytest.approx(0.05, rel=0.05)
    ssd, mlp = model.backbone.layers[0].mixer, model.backbone.layers[1].mixer
    assert ssd.in_proj.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert mlp.fc1.weight.std().item() == pytest.approx(0.05, rel=0.05)
    # residual-writing projections: 1 / sqrt(n_layers) smaller
    assert ssd.out_proj.weight.std().item() == pytest.approx(0.05 / math.sqrt(n_layers), rel=0.05)
    assert mlp.fc2.weight.std().item() == pytest.approx(0.05 / math.sqrt(n_layers), rel=0.05)
    assert torch.count_nonzero(mlp.fc1.bias) == 0 and torch.count_nonzero(mlp.fc2.bias) == 0
    # the mixer's own init survives: A in A_init_range, D = 1, dt = softplus(dt_bias) in [dt_min, dt_max]
    A = torch.exp(ssd.A_log)
    assert ((A >= 2.0) & (A <= 4.0)).all() and torch.equal(ssd.D, torch.ones_like(ssd.D))
    dt = torch.nn.functional.softplus(ssd.dt_bias)
    assert ((dt >= 0.001 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert torch.equal(model.backbone.layers[0].norm.weight, torch.ones(256))


def test_a_change_at_t_changes_no_logit_before_t(tiny_spec):
    model = build_model(tiny_spec)
    ids = random_ids(tiny_spec, 2, 19)
    t = 11
    changed = ids.clone()
    changed[:, t] = (ids[:, t] + 1) % tiny_spec.vocab_size
    a, b = model(ids), model(changed)
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t], b[:, t])


def test_parallel_forward_equals_stepwise_decoding(tiny_spec):
    model = build_model(tiny_spec)
    ids = random_ids(tiny_spec, 2, 21)
    full = model(ids)
    caches = model.init_caches(2, 21)
    pieces = [model(ids[:, :9], caches=caches)]  # prefill spanning a chunk boundary and the sliding window
    pieces += [model(ids[:, t:t + 1], caches=caches) for t in range(9, 15)]
    pieces.append(model(ids[:, 15:], caches=caches))  # a second multi-token chunk after steps
    stepped = torch.cat(pieces, dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


def test_greedy_generate_matches_argmax_of_parallel_forward(tiny_spec):
    model = build_model(tiny_spec)
    prompt = random_ids(tiny_spec, 2, 7)
    out = model.generate(prompt, max_new_tokens=8)
    assert out.shape == (2, 15) and torch.equal(out[:, :7], prompt)
    logits = model(out)[:, :, : tiny_spec.vocab_size]
    assert torch.equal(out[:, 7:], logits[:, 6:-1].argmax(-1))


def test_sampling_is_reproducible_with_a_seed(tiny_spec):
    model = build_model(tiny_spec)
    prompt = random_ids(tiny_spec, 3, 4)
    a = model.generate(prompt, 8, temperature=1.5, seed=7)
    b = model.generate(prompt, 8, temperature=1.5, seed=7)
    c = model.generate(prompt, 8, temperature=1.5, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(model.generate(prompt, 3, temperature=1.0, top_k=1, seed=3), model.generate(prompt, 3))


def test_padded_vocab_rows_are_never_generated(tiny_spec):
    model = build_model(tiny_spec)

    def favour_padding(module, args, logits):  # make the padding rows win every argmax
        return logits.index_fill(-1, torch.arange(tiny_spec.vocab_size, 64), 1e4)

    model.lm_head.register_forward_hook(favour_padding)
    prompt = random_ids(tiny_spec, 2, 3)
    assert model(prompt).argmax(-1).min() >= tiny_spec.vocab_size
    for kwargs in [{}, {"temperature": 1.0, "seed": 0}]:
        out = model.generate(prompt, 6, **kwargs)
        assert out.max() < tiny_spec.vocab_size


def test_packed_sequences_equal_separate_forwards(tiny_spec):
    model = build_model(tiny_spec)
    a, b = random_ids(tiny_spec, 1, 11), random_ids(tiny_spec, 1, 6)
    packed = model(torch.cat([a, b], dim=1), cu_seqlens=torch.tensor([0, 11, 17], dtype=torch.int32))
    torch.testing.assert_close(packed, torch.cat([model(a), model(b)], dim=1), rtol=1e-5, atol=1e-5)


def test_a_packed_forward_reads_the_offsets_back_once_for_all_its_layers(tiny_spec, monkeypatch):
    """Each SSD and attention layer checks cu_seqlens and lays out its chunks from its values; on a GPU each read
    waits for the stream, so the layers share one read (kernels/offsets.py)."""
    reads, read_back = [], offsets.read_back
    monkeypatch.setattr(offsets, "read_back", lambda cu: reads.append(cu) or read_back(cu))
    model = build_model(tiny_spec)
    ids = random_ids(tiny_spec, 1, 17)
    cu_seqlens = torch.tensor([0, 11, 17], dtype=torch.int32)
    model(ids, cu_seqlens=cu_seqlens)
    model(ids, cu_seqlens=cu_seqlens)
    assert len(reads) == 1
    model(ids, cu_seqlens=torch.tensor([0, 5, 17], dtype=torch.int32))
    assert len(reads) == 2


def test_state_dict_round_trip_gives_identical_logits(tiny_spec, tmp_path):
    model = build_model(tiny_spec)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    fresh = build_model(tiny_spec)
    ids = random_ids(tiny_spec, 2, 13)
    assert not torch.equal(fresh(ids), model(ids))
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert torch.equal(fresh(ids), model(ids))
    assert fresh.lm_head.weight is fresh.backbone.embedding.weight


def test_bad_inputs_raise_value_errors(tiny_spec):
    model = build_model(tiny_spec)
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.rand(2, 5))
    with pytest.raises(ValueError, match="caches"):
        model(random_ids(tiny_spec, 1, 3), caches=[None])
    with pytest.raises(ValueError, match="temperature"):
        model.generate(random_ids(tiny_spec, 1, 3), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="spec"):
        build_model({"name": "x"})


@pytest.fixture
def gain_block_type():
    """A user block type "gain" (y = x * weight, weight (d_model,) initialised to `init`) registered with the
    spec union, the module registry and the accounting; unregistered afterwards."""
    from typing import Literal

    from pydantic import BaseModel

    from archspec.accounting import _ACCOUNTING, BlockAccounting, register_block_accounting
    from archspec.blocks import register_module
    from archspec.blocks.registry import _REGISTRY
    from archspec.spec import register_block_spec, unregister_block_spec

    class GainSpec(BaseModel):
        type: Literal["gain"] = "gain"
        init: float = 1.0

    class Gain(torch.nn.Module):
        def __init__(self, d_model: int, init: float = 1.0, device=None, dtype=None) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.full((d_model,), init, device=device, dtype=dtype))

        def init_cache(self, batch_size, max_seqlen, device=None, dtype=None):
            return None

        def forward(self, x, cache=None, cu_seqlens=None):
            return x * self.weight

    register_block_spec(GainSpec)
    register_module("gain", Gain)
    register_block_accounting("gain", BlockAccounting(params=lambda b, d: d, flops=lambda b, d, l: {"gain": 0.0}))
    yield
    unregister_block_spec("gain")
    _REGISTRY.pop("gain")
    _ACCOUNTING.pop("gain")


def test_user_block_types_build_from_their_spec_fields(gain_block_type):
    spec = make_spec(blocks={"G": {"type": "gain", "init": 0.5}, "F": {"type": "mlp"}}, layout="G F G")
    model = build_model(spec)
    assert torch.equal(model.backbone.layers[0].mixer.weight, torch.full((32,), 0.5))
    assert params(model) == account(spec, 8).params
    assert model(random_ids(spec, 1, 5)).shape == (1, 5, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 5e-2)])
def test_cuda_parallel_forward_equals_stepwise_decoding(dtype, tol):
    # the production path: Triton SSD scan/step and attention "auto"; tolerances cover TF32/bf16 matmuls
    spec = make_spec(blocks={
        "M": {"type": "ssd", "d_state": 64, "head_dim": 64, "chunk_size": 32},
        "A": {"type": "attention", "n_heads": 4, "n_kv_heads": 2},
        "W": {"type": "attention", "n_heads": 4, "sliding_window": 24},
        "F": {"type": "mlp"}}, d_model=128, layout="M F A M W F")
    model = build_model(spec, device="cuda", dtype=dtype)
    ids = torch.randint(0, spec.vocab_size, (2, 80), device="cuda")
    with torch.no_grad():
        full = model(ids).float()
        caches = model.init_caches(2, 80)
        stepped = torch.cat([model(ids[:, :50], caches=caches)]
                            + [model(ids[:, t:t + 1], caches=caches) for t in range(50, 80)], dim=1).float()
    scale = full.abs().max()
    assert ((stepped - full).abs().max() / scale).item() < tol
    out = model.generate(ids[:, :8], 6, temperature=1.0, top_k=5, seed=1)
    assert torch.equal(out, model.generate(ids[:, :8], 6, temperature=1.0, top_k=5, seed=1))
    assert out.device.type == "cuda" and out.max() < spec.vocab_size


def test_init_mamba_ssm_keeps_pytorch_linear_init_like_mamba_ssm():
    """init: mamba_ssm leaves linears at kaiming-uniform (bound 1/sqrt(fan_in)); out_proj / fc2 are redrawn the
    same way and divided by sqrt(n_layers); biases 0; the embedding still ~ N(0, init_std)."""
    torch.manual_seed(0)
    spec = make_spec(d_model=256, init_std=0.05, init="mamba_ssm", blocks={
        "M": {"type": "ssd", "d_state": 16, "head_dim": 64},
        "F": {"type": "mlp", "hidden": 512, "bias": True}}, layout=["M", "F"] * 2)
    model = build_model(spec)
    ssd, mlp = model.backbone.layers[0].mixer, model.backbone.layers[1].mixer

    def uniform_bound(weight: torch.Tensor, scale: float = 1.0) -> float:
        return scale / math.sqrt(weight.shape[1])

    for weight, scale in ((ssd.in_proj.weight, 1.0), (mlp.fc1.weight, 1.0),
                          (ssd.out_proj.weight, 0.5), (mlp.fc2.weight, 0.5)):  # 0.5 = 1 / sqrt(4 layers)
        bound = uniform_bound(weight, scale)
        assert weight.abs().max().item() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # std of U(-b, b)
    assert torch.count_nonzero(mlp.fc1.bias) == 0 and torch.count_nonzero(mlp.fc2.bias) == 0
    assert model.backbone.embedding.weight.std().item() == pytest.approx(0.05, rel=0.05)
