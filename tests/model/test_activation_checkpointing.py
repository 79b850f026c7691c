"""training.activation_checkpointing: equal gradients and losses, far fewer saved activations, inference untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archspec.builder as builder
from archspec.accounting import account, steps_for_budget
from archspec.builder import build_model
from archspec.spec import ModelSpec

from model_specs import make_spec


PACKED = torch.tensor([0, 7, 16, 24])  # three sequences packed into one row of 24 tokens


def _model(spec: ModelSpec, dtype: torch.dtype = torch.float64) -> builder.LanguageModel:
    torch.manual_seed(0)
    return build_model(spec, dtype=dtype).train()


def _loss_and_grads(model, ids, cu_seqlens=None, *, on: bool, seed: int = 0):
    """(logits, the gradient of every parameter) of a non-trivial scalar of the logits."""
    model.zero_grad(set_to_none=True)
    model.backbone.activation_checkpointing = on
    torch.manual_seed(seed)
    logits = model(ids, cu_seqlens=cu_seqlens)
    (logits.sin() * torch.linspace(-1, 1, logits.shape[-1], dtype=logits.dtype)).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, ids, cu_seqlens=None, *, atol: float = 0.0) -> None:
    logits_off, grads_off = _loss_and_grads(model, ids, cu_seqlens, on=False)
    logits_on, grads_on = _loss_and_grads(model, ids, cu_seqlens, on=True)
    assert set(grads_on) == set(grads_off) == {n for n, p in model.named_parameters()}
    torch.testing.assert_close(logits_on, logits_off, atol=atol, rtol=0)
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("cu_seqlens", [None, PACKED], ids=["batch", "packed"])
def test_gradients_equal_exactly_in_float64(cu_seqlens):
    model = _model(make_spec())  # ssd, mlp, GQA attention, windowed attention
    ids = torch.randint(0, 50, (1 if cu_seqlens is not None else 3, 24), generator=torch.Generator().manual_seed(1))
    _assert_same(model, ids, cu_seqlens)


@pytest.mark.parametrize("cu_seqlens", [None, PACKED], ids=["batch", "packed"])
def test_gradients_equal_in_float32(cu_seqlens):
    model = _model(make_spec(), torch.float32)
    ids = torch.randint(0, 50, (1 if cu_seqlens is not None else 3, 24), generator=torch.Generator().manual_seed(2))
    _assert_same(model, ids, cu_seqlens, atol=1e-6)


@pytest.mark.parametrize("cu_seqlens", [None, torch.tensor([0, 9, 32])], ids=["batch", "packed"])
def test_triton_ssd_autograd_function_recomputes_under_checkpoint(cu_seqlens):
    """The Triton scan's autograd.Function (through Triton's interpreter without CUDA) recomputed inside a
    non-reentrant checkpoint gives the gradients of the plain run."""
    spec = make_spec(
        blocks={"M": {"type": "ssd", "d_state": 16, "head_dim": 32, "ngroups": 2, "chunk_size": 16,
                      "backend": "triton"},
                "A": {"type": "attention", "n_heads": 4, "n_kv_heads": 2, "backend": "sdpa"},
                "F": {"type": "mlp", "kind": "swiglu"}},
        layout=["M", "F", "A", "M"],
    )
    model = _model(spec, torch.float32)
    ids = torch.randint(0, 50, (1, 32), generator=torch.Generator().manual_seed(3))
    _assert_same(model, ids, cu_seqlens, atol=1e-6)


class _DropoutAfter(nn.Module):
    """A mixer followed by dropout: randomness inside a checkpointed block."""

    def __init__(self, inner: nn.Module, p: float = 0.5) -> None:
        super().__init__()
        self.inner, self.drop = inner, nn.Dropout(p)

    def forward(self, x, cache=None, **kwargs):
        return self.drop(self.inner(x, cache=cache, **kwargs))


def test_random_blocks_draw_the_same_masks_when_recomputed():
    """The built-in mixers draw nothing at random; a user block that does (dropout) gets the same mask in the
    recomputation, since checkpoint restores the RNG state (preserve_rng_state), so gradients stay equal."""
    model = _model(make_spec())
    for layer in model.backbone.layers:
        layer.mixer = _DropoutAfter(layer.mixer)
    ids = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(4))
    _assert_same(model, ids)
    logits_a, _ = _loss_and_grads(model, ids, on=True, seed=0)
    logits_b, _ = _loss_and_grads(model, ids, on=True, seed=1)
    assert not torch.equal(logits_a, logits_b)  # the dropout is live: the comparison above means something


def _saved_activation_bytes(model, ids) -> int:
    """Bytes of the distinct non-parameter tensors that one forward saves for backward (then runs backward)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}  # held until the end, so that no address is reused by another tensor

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids)
    logits.sum().backward()
    return sum(t.untyped_storage().nbytes() for t in saved.values())


def test_checkpointing_saves_far_fewer_activations_for_backward():
    spec = make_spec(layout=["M", "F", "A", "F"] * 3)
    model = _model(spec, torch.float32)
    ids = torch.randint(0, 50, (2, 64), generator=torch.Generator().manual_seed(5))
    model.backbone.activation_checkpointing = False
    plain = _saved_activation_bytes(model, ids)
    model.backbone.activation_checkpointing = True
    checkpointed = _saved_activation_bytes(model, ids)
    # what remains: each block's input (2 x 64 x 32 float32 = 16 KiB, 12 of them) and the final norm / LM head's
    stream = ids.numel() * spec.d_model * 4
    assert checkpointed <= 16 * stream
    assert checkpointed < plain / 8
    model.eval()  # eval mode (validation) runs the plain loop even with gradients on
    assert _saved_activation_bytes(model, ids) == plain


def test_spec_switches_it_on_and_only_training_forwards_recompute():
    assert ModelSpec.model_fields["training"].default_factory().activation_checkpointing is False
    model = build_model(make_spec(training={"activation_checkpointing": True}))
    backbone = model.backbone
    assert backbone.activation_checkpointing is True
    model.train()
    assert backbone.recomputes()
    assert not backbone.recomputes(caches=model.init_caches(1, 8))
    with torch.no_grad():
        assert not backbone.recomputes()
    model.eval()
    assert not backbone.recomputes()
    assert build_model(make_spec()).backbone.activation_checkpointing is False


def test_decoding_is_unaffected():
    spec = make_spec(training={"activation_checkpointing": True})
    torch.manual_seed(0)
    on = build_model(spec)
    off = build_model(make_spec())
    off.load_state_dict(on.state_dict())
    prompt = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(6))
    for model in (on, off):
        model.train()  # generate must not checkpoint even in training mode: it runs under no_grad with caches
    assert torch.equal(on.generate(prompt, 6), off.generate(prompt, 6))


def test_accounting_keeps_training_flops_and_reports_the_recompute():
    on, off = make_spec(training={"activation_checkpointing": True}), make_spec()
    acc_on, acc_off = account(on, 64), account(off, 64)
    assert acc_on.train_flops_per_token == acc_off.train_flops_per_token == 3 * acc_off.fwd_flops_per_token
    assert steps_for_budget(on, 1e10, 8, 64) == steps_for_budget(off, 1e10, 8, 64)
    assert acc_off.recompute_flops_per_token == 0.0
    layers = sum(layer.fwd_flops_per_token for layer in acc_on.layers)
    assert acc_on.recompute_flops_per_token == layers == acc_on.fwd_flops_per_token - acc_on.lm_head_flops_per_token
