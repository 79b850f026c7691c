"""ModelSpec -> LanguageModel: the only place where specs become modules.

The module tree and state-dict names follow mamba_ssm's ``MambaLMHeadModel``: ``backbone.embedding``,
``backbone.layers.{i}`` (a ``ResidualBlock`` with ``norm`` and ``mixer``), ``backbone.norm_f`` and ``lm_head``
(sharing the embedding's weight when the spec ties them).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from archspec.blocks import ResidualBlock, get_module_factory, make_norm
from archspec.layout import expand_layout
from archspec.spec import AttentionSpec, MLPSpec, ModelSpec, SSDSpec

RESCALED_PARAMETERS = ("out_proj.weight", "fc2.weight")
"""Mixer parameters that write into the residual stream; their init is scaled by 1 / sqrt(n_layers)."""


# ------------------------------------------------------------------------------------ spec fields -> block kwargs
def _ssd_kwargs(block: SSDSpec, d_model: int) -> dict[str, Any]:
    return {
        "d_state": block.d_state, "d_conv": block.d_conv, "expand": block.expand, "head_dim": block.head_dim,
        "ngroups": block.ngroups, "A_init_range": tuple(block.A_init_range), "dt_min": block.dt_min,
        "dt_max": block.dt_max, "dt_init_floor": block.dt_init_floor, "dt_limit": tuple(block.dt_limit),
        "D_has_hdim": block.D_has_hdim, "rmsnorm": block.rmsnorm, "norm_before_gate": block.norm_before_gate,
        "bias": block.bias, "conv_bias": block.conv_bias, "chunk_size": block.chunk_size, "backend": block.backend,
    }


def _attention_kwargs(block: AttentionSpec, d_model: int) -> dict[str, Any]:
    return {
        "n_heads": block.n_heads, "n_kv_heads": block.n_kv_heads, "head_dim": block.head_dim, "rope": block.rope,
        "rope_theta": block.rope_theta, "rope_fraction": block.rope_fraction,
        "sliding_window": block.sliding_window, "qk_norm": block.qk_norm, "bias": block.bias,
        "d_conv": block.d_conv, "backend": block.backend,
    }


def _mlp_kwargs(block: MLPSpec, d_model: int) -> dict[str, Any]:
    return {"hidden": block.hidden_size(d_model), "kind": block.kind, "bias": block.bias}


_BLOCK_KWARGS: dict[str, Callable[[Any, int], dict[str, Any]]] = {
    "ssd": _ssd_kwargs,
    "attention": _attention_kwargs,
    "mlp": _mlp_kwargs,
}


def block_kwargs(block: Any, d_model: int) -> dict[str, Any]:
    """Keyword arguments of the block type's module factory for a block spec.

    Built-in types map their spec fields explicitly; a user-registered type gets its spec's fields as they are
    (everything but ``type``).
    """
    to_kwargs = _BLOCK_KWARGS.get(block.type)
    if to_kwargs is None:
        return block.model_dump(exclude={"type"})
    return to_kwargs(block, d_model)


def _accepts(factory: Callable[..., nn.Module], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_mixer(block: Any, d_model: int, *, layer_idx: int, device=None, dtype=None) -> nn.Module:
    """The mixer module of one layer; layer_idx, device and dtype go to factories that accept them."""
    factory = get_module_factory(block.type)
    kwargs = block_kwargs(block, d_model)
    for name, value in (("layer_idx", layer_idx), ("device", device), ("dtype", dtype)):
        if _accepts(factory, name):
            kwargs[name] = value
    return factory(d_model, **kwargs)


# ------------------------------------------------------------------------------------ the model
class Backbone(nn.Module):
    """Embedding, the residual stack and the final norm. input_ids (b, l) -> hidden (b, l, d_model).

    activation_checkpointing (from ``spec.training.activation_checkpointing``; a plain attribute, so it can be
    switched on a built model): in training mode with gradients enabled and no decode caches, each residual
    block runs under ``torch.utils.checkpoint`` (non-reentrant, RNG state preserved), so backward keeps only the
    blocks' inputs and recomputes each block's forward when it reaches it. Eval mode, ``no_grad`` and cached
    decoding run the plain loop.
    """

    def __init__(self, spec: ModelSpec, layer_symbols: list[str], device=None, dtype=None) -> None:
        super().__init__()
        self.activation_checkpointing = spec.training.activation_checkpointing
        factory = {"device": device, "dtype": dtype}
        self.embedding = nn.Embedding(spec.padded_vocab_size, spec.d_model, **factory)
        self.layers = nn.ModuleList(
            ResidualBlock(build_mixer(spec.blocks[symbol], spec.d_model, layer_idx=i, **factory), spec.d_model,
                          norm=spec.norm, norm_eps=spec.norm_eps, residual_in_fp32=spec.residual_in_fp32,
                          **factory)
            for i, symbol in enumerate(layer_symbols)
        )
        self.norm_f = make_norm(spec.norm, spec.d_model, spec.norm_eps, **factory)

    def forward(self, input_ids: torch.Tensor, caches: Optional[list] = None,
                cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embedding(input_ids)
        if self.recomputes(caches):
            for layer in self.layers:
                x = checkpoint(layer, x, None, cu_seqlens, use_reentrant=False)
        else:
            for i, layer in enumerate(self.layers):
                x = layer(x, cache=None if caches is None else caches[i], cu_seqlens=cu_seqlens)
        return self.norm_f(x)

    def recomputes(self, caches: Optional[list] = None) -> bool:
        """Whether a forward now (with these caches) would checkpoint its blocks: activation_checkpointing is on,
        the module is in training mode, gradients are enabled and there are no decode caches."""
        return bool(self.activation_checkpointing) and self.training and caches is None and torch.is_grad_enabled()


class LanguageModel(nn.Module):
    """A causal language model built from a ModelSpec.

    forward: input_ids (batch, seqlen) int64 -> logits (batch, seqlen, padded_vocab) in the LM head's dtype.
    The logits of the padding rows (vocab_size .. padded_vocab - 1) are real outputs of the head; generate
    never samples them.
    """

    def __init__(self, spec: ModelSpec, device=None, dtype=None) -> None:
        super().__init__()
        self.spec = spec
        self.layer_symbols = expand_layout(spec)
        self.backbone = Backbone(spec, self.layer_symbols, device=device, dtype=dtype)
        self.lm_head = nn.Linear(spec.d_model, spec.padded_vocab_size, bias=False, device=device, dtype=dtype)
        if spec.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids: torch.Tensor, caches: Optional[list] = None,
                cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids (batch, seqlen) integer token ids -> logits (batch, seqlen, padded_vocab).

        caches: the list from ``init_caches`` (one entry per layer); the call continues from and updates them.
        cu_seqlens: (nseqs + 1,) int32/int64 offsets of sequences packed along seqlen (batch 1, no caches);
        every mixer restarts at each sequence start.
        """
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"input_ids: expected a (batch, seqlen) int64/int32 tensor, got shape "
                             f"{tuple(input_ids.shape)} dtype {input_ids.dtype}")
        if caches is not None and len(caches) != len(self.backbone.layers):
            raise ValueError(f"caches: expected one cache per layer ({len(self.backbone.layers)}), got {len(caches)}")
        hidden = self.backbone(input_ids, caches=caches, cu_seqlens=cu_seqlens)
        return self.lm_head(hidden.to(self.lm_head.weight.dtype))

    def init_caches(self, batch_size: int, max_seqlen: int, device=None, dtype=None) -> list:
        """Fresh decode caches, one per layer (None for stateless mixers), for up to max_seqlen tokens."""
        if batch_size < 1 or max_seqlen < 1:
            raise ValueError(f"batch_size/max_seqlen: expected positive integers, got {batch_size}, {max_seqlen}")
        return [layer.init_cache(batch_size, max_seqlen, device=device, dtype=dtype)
                for layer in self.backbone.layers]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: Optional[int] = None, seed: Optional[int] = None) -> torch.Tensor:
        """Continue input_ids (batch, seqlen) by max_new_tokens tokens -> (batch, seqlen + max_new_tokens).

        The prompt is prefilled in one call, then each new token is one step through the caches.
        temperature 0: greedy (argmax); > 0: sample from softmax(logits / temperature), restricted to the top_k
        logits when given, with a torch.Generator seeded by ``seed`` (reproducible) or the global RNG.
        Only ids below vocab_size are produced.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected a non-negative integer, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature: expected >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k: expected None or a positive integer, got {top_k}")
        if max_new_tokens == 0:
            return input_ids
        batch, seqlen = input_ids.shape
        generator = None
        if seed is not None and temperature > 0:
            generator = torch.Generator(device=input_ids.device).manual_seed(seed)
        caches = self.init_caches(batch, seqlen + max_new_tokens, device=input_ids.device)
        logits = self(input_ids, caches=caches)[:, -1]
        new_tokens = []
        for step in range(max_new_tokens):
            token = self._pick(logits, temperature, top_k, generator)
            new_tokens.append(token)
            if step + 1 < max_new_tokens:
                logits = self(token[:, None], caches=caches)[:, -1]
        return torch.cat([input_ids, torch.stack(new_tokens, dim=1).to(input_ids.dtype)], dim=1)

    def _pick(self, logits: torch.Tensor, temperature: float, top_k: Optional[int],
              generator: Optional[torch.Generator]) -> torch.Tensor:
        """logits (batch, padded_vocab) -> next token ids (batch,) among the real vocabulary."""
        logits = logits[:, : self.spec.vocab_size].float()
        if temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ------------------------------------------------------------------------------------ initialisation
@torch.no_grad()
def init_weights(model: LanguageModel) -> None:
    """mamba_ssm-style initialisation (its ``_init_weights`` with the GPT-2 residual rescaling).

    Embedding ~ N(0, init_std); linear biases 0; each layer's residual-writing projection (``out_proj.weight`` /
    ``fc2.weight`` of the mixer) is divided by sqrt(n_layers), n_layers counting every residual block (mamba_ssm's
    n_residuals_per_layer * n_layer). The other linear weights: spec.init "normal" draws them ~ N(0, init_std)
    (the residual-writing ones too, before the division), so that init_std governs the whole model;
    "mamba_ssm" keeps PyTorch's default kaiming-uniform init, redrawing the residual-writing ones with it before
    the division, exactly as mamba_ssm does. Norm weights, the conv and the mixers' own special parameters
    (dt_bias, A_log, D) keep the values their modules gave them.
    """
    std = model.spec.init_std
    normal = model.spec.init == "normal"
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if normal:
                nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
    scale = 1.0 / math.sqrt(len(model.backbone.layers))
    for layer in model.backbone.layers:
        for name, param in layer.mixer.named_parameters():
            if name in RESCALED_PARAMETERS:
                if not normal:
                    nn.init.kaiming_uniform_(param, a=math.sqrt(5))
                param.mul_(scale)


def build_model(spec: ModelSpec, *, device=None, dtype=None) -> LanguageModel:
    """Build and initialise the LanguageModel of ``spec`` on ``device`` (``"meta"`` allocates nothing) in
    ``dtype`` (default: torch's default dtype; the Mamba-2 ``D`` stays float32 as in mamba_ssm)."""
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec: expected a ModelSpec, got {type(spec).__name__}")
    model = LanguageModel(spec, device=device, dtype=dtype)
    init_weights(model)
    return model
