"""Continuing a prompt with a trained model: checking and encoding the prompt, calling LanguageModel.generate.

A model trained on byte-level text (data task "text") takes a text prompt: its UTF-8 bytes as ids, after BOS (256)
when the task puts BOS before each document (``add_bos``), as training saw a document start. Other models take token
ids. A prompt must be non-empty, hold only ids of the model's vocabulary (0 .. vocab_size - 1) and fit the context
the model was trained on (``data.seq_len``; a mamba_ssm checkpoint has no such limit). The continuation may run
past that context (the SSD state and RoPE carry on); ``beyond_context`` says so, for a note.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from archspec.builder import LanguageModel
from archspec.data.text import EOS_ID, ByteTokenizer
from archspec.spec import ModelSpec

__all__ = ["PromptError", "is_text_model", "encode_text_prompt", "check_prompt_ids", "context_length",
           "beyond_context", "generate_ids", "decode_text"]


class PromptError(ValueError):
    """A prompt the model cannot take; the message starts with the option (``--prompt`` / ``--prompt-ids``)."""


def is_text_model(spec: ModelSpec) -> bool:
    """Whether the spec was trained on byte-level text (data task "text", ByteTokenizer ids)."""
    return spec.data is not None and spec.data.task == "text"


def context_length(spec: ModelSpec) -> int | None:
    """Tokens per training example (``data.seq_len``): the longest prompt taken; None without a data section."""
    return None if spec.data is None else spec.data.seq_len


def encode_text_prompt(spec: ModelSpec, text: str, *, model: str = "the model") -> list[int]:
    """The ids of ``text`` for a byte-level text model (BOS first when ``data.add_bos``); ``model`` names the
    model in errors. Raises PromptError for a model not trained on text, an empty prompt, or one too long."""
    if not is_text_model(spec):
        trained = (f"was trained on the {spec.data.task} task, whose inputs are token ids" if spec.data is not None
                   else "has no data section naming a text task, so it takes token ids")
        raise PromptError(f"--prompt: {model} {trained}, not text; give them as --prompt-ids 1,2,3")
    ids = ByteTokenizer(add_bos=spec.data.add_bos).encode(text)
    if not ids:
        raise PromptError("--prompt: is empty; give at least one character")
    _check_length(spec, ids, "--prompt", model, unit=" (with BOS)" if spec.data.add_bos else "")
    return ids


def check_prompt_ids(spec: ModelSpec, ids: Sequence[int], *, model: str = "the model") -> list[int]:
    """``ids`` as a list after checking them against the spec: non-empty, each in [0, vocab_size), no longer than
    the context. Raises PromptError naming the first bad id and its position."""
    ids = [int(i) for i in ids]
    if not ids:
        raise PromptError("--prompt-ids: is empty; give at least one id")
    for position, value in enumerate(ids):
        if not 0 <= value < spec.vocab_size:
            raise PromptError(f"--prompt-ids: id {value} (position {position}) is outside the vocabulary of {model} "
                              f"(ids 0 to {spec.vocab_size - 1})")
    _check_length(spec, ids, "--prompt-ids", model)
    return ids


def _check_length(spec: ModelSpec, ids: list[int], option: str, model: str, unit: str = "") -> None:
    limit = context_length(spec)
    if limit is not None and len(ids) > limit:
        raise PromptError(f"{option}: {len(ids)} tokens{unit} exceed the {limit}-token context {model} was trained "
                          f"on (data.seq_len); shorten the prompt")


def beyond_context(spec: ModelSpec, prompt_len: int, max_new_tokens: int) -> bool:
    """Whether the prompt and the new tokens together run past the trained context."""
    limit = context_length(spec)
    return limit is not None and prompt_len + max_new_tokens > limit


def generate_ids(model: LanguageModel, prompt: Sequence[int], *, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None) -> list[int]:
    """The prompt followed by ``max_new_tokens`` new ids: ``model.generate`` on a batch of one, on the model's
    device (greedy at temperature 0; else sampled with a generator seeded by ``seed``)."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    finally:
        model.train(was_training)
    return out[0].tolist()


def decode_text(ids: Sequence[int], prompt_len: int) -> str:
    """The text of a byte-level sequence: prompt and continuation, the continuation cut at its first EOS (257),
    the end of a document; BOS / EOS are not shown and invalid UTF-8 becomes U+FFFD."""
    ids = list(ids)
    new = ids[prompt_len:]
    if EOS_ID in new:
        new = new[: new.index(EOS_ID)]
    return ByteTokenizer().decode(ids[:prompt_len] + new)
