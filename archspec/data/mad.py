"""The MAD synthetic task suite (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures").

Each `*_examples(config, num, generator, seed)` returns (input_ids, targets), both (num, seq_len) int64, with
targets -100 everywhere except at answer positions. All randomness comes from `generator`; `seed` is the
split-independent task seed, used only by memorization (its key->value map is shared by train and val).

Token layouts (V = vocab_size, L = seq_len):
- in_context_recall: K = V // 2 keys [0, K), values [K, 2K). L / 2 pairs `k v`; keys drawn with replacement, a
  per-example random map gives each key its value. Target at a key position (= its value, the next token) only
  when that key appeared earlier in the example (MAD's multi-query variant).
- noisy_recall: as above with K = (V - noise_vocab_size) // 2; noise ids [2K, 2K + noise_vocab_size). Each
  2-token slot is noise with probability frac_noise; noise slots carry no targets and define no keys.
- fuzzy_recall: id 0 pads (on the left), K = (V - 1) // 2 key tokens [1, K], value tokens [K + 1, 2K]. Each
  example draws num_kv_pairs keys of 1..k_motif_size tokens (a prefix-free set, so a key is complete as soon as
  it matches) and values of 1..v_motif_size tokens, then lays out pairs drawn uniformly while they fit. When a
  key repeats, targets cover its whole value: from the key's last token to the value's second-to-last token the
  target is the next token.
- selective_copying: 0 blank, 1 copy marker, data tokens [2, V). The first L - n positions hold the
  n = num_tokens_to_copy data tokens at random positions among blanks; then the marker and n - 1 blanks. Targets
  at the marker and those blanks are the data tokens in order (the answers are not fed back as inputs).
- compression: 0 blank, 1 compress marker, data tokens [2, V). n = L // 2 random tokens (after one leading blank
  when L is odd), the marker, n - 1 blanks; targets at the marker and the blanks reproduce the n tokens in order.
  MAD trains an encoder plus MLP decoder on the aggregation token; a causal LM cannot express that, so this is
  the closest token-level form: every answer has to pass through the model's state at and after the marker.
- memorization: K = V // 2 keys [0, K), values [K, 2K); a fixed bijection key -> value drawn from the task seed.
  L / 2 pairs `k v` with uniform keys; the target at every key position is its value.
"""

from __future__ import annotations

import torch

from archspec.data.config import (
    CompressionConfig,
    FuzzyRecallConfig,
    InContextRecallConfig,
    MemorizationConfig,
    NoisyRecallConfig,
    SelectiveCopyingConfig,
)
from archspec.data.sampling import IGNORE_INDEX, sorted_positions
from archspec.data.seeding import make_generator

BLANK = 0
"""Blank / pad id of selective_copying, compression and fuzzy_recall."""
MARKER = 1
"""Copy (selective_copying) or compress (compression) marker id."""


def _recall(
    num: int, seq_len: int, num_keys: int, noise_vocab_size: int, frac_noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query recall with optional noise slots; layout as in the module docstring."""
    num_slots = seq_len // 2
    keys = torch.randint(0, num_keys, (num, num_slots), generator=generator)
    kv_map = torch.randint(num_keys, 2 * num_keys, (num, num_keys), generator=generator)
    values = kv_map.gather(1, keys)
    is_noise = torch.rand(num, num_slots, generator=generator) < frac_noise
    if noise_vocab_size:
        noise_low = 2 * num_keys
        noise = torch.randint(noise_low, noise_low + noise_vocab_size, (num, num_slots, 2), generator=generator)
        keys = torch.where(is_noise, noise[..., 0], keys)
        values = torch.where(is_noise, noise[..., 1], values)

    slot_index = torch.arange(num_slots).expand(num, num_slots)
    first_seen = torch.full((num, num_keys), num_slots, dtype=torch.long)
    real_keys = keys.clamp(max=num_keys - 1)
    first_seen.scatter_reduce_(1, real_keys, slot_index.masked_fill(is_noise, num_slots), reduce="amin")
    repeated = ~is_noise & (slot_index > first_seen.gather(1, real_keys))

    inputs = torch.stack([keys, values], dim=2).reshape(num, seq_len)
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, 0::2] = torch.where(repeated, values, IGNORE_INDEX)
    return inputs, targets


def in_context_recall_examples(
    config: InContextRecallConfig, num: int, generator: torch.Generator, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAD in-context recall (multi-query); see the module docstring."""
    del seed
    return _recall(num, config.seq_len, config.vocab_size // 2, 0, 0.0, generator)


def noisy_recall_examples(
    config: NoisyRecallConfig, num: int, generator: torch.Generator, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAD noisy in-context recall; see the module docstring."""
    del seed
    num_keys = (config.vocab_size - config.noise_vocab_size) // 2
    return _recall(num, config.seq_len, num_keys, config.noise_vocab_size, config.frac_noise, generator)


def _is_prefix_free_with(candidate: tuple[int, ...], accepted: list[tuple[int, ...]]) -> bool:
    """True when no accepted key is a prefix of `candidate` or has it as a prefix (equal keys included)."""
    for key in accepted:
        shared = min(len(key), len(candidate))
        if key[:shared] == candidate[:shared]:
            return False
    return True


def _fuzzy_keys(config: FuzzyRecallConfig, num_key_tokens: int, generator: torch.Generator) -> list[tuple[int, ...]]:
    """num_kv_pairs prefix-free keys of 1..k_motif_size tokens from [1, num_key_tokens]."""
    wanted, longest = config.num_kv_pairs, config.k_motif_size
    keys: list[tuple[int, ...]] = []
    while len(keys) < wanted:
        lengths = torch.randint(1, longest + 1, (wanted,), generator=generator).tolist()
        tokens = torch.randint(1, num_key_tokens + 1, (wanted, longest), generator=generator).tolist()
        for size, row in zip(lengths, tokens):
            candidate = tuple(row[:size])
            if len(keys) < wanted and _is_prefix_free_with(candidate, keys):
                keys.append(candidate)
    return keys


def _fuzzy_example(config: FuzzyRecallConfig, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """One fuzzy-recall example as (input ids, targets) lists of length seq_len."""
    num_key_tokens = (config.vocab_size - 1) // 2
    keys = _fuzzy_keys(config, num_key_tokens, generator)
    pairs, longest = config.num_kv_pairs, config.v_motif_size
    value_lengths = torch.randint(1, longest + 1, (pairs,), generator=generator).tolist()
    value_tokens = torch.randint(
        num_key_tokens + 1, 2 * num_key_tokens + 1, (pairs, longest), generator=generator
    ).tolist()
    values = [tuple(row[:size]) for size, row in zip(value_lengths, value_tokens)]
    picks = torch.randint(0, pairs, (config.seq_len // 2,), generator=generator).tolist()

    inputs: list[int] = []
    targets: list[int] = []
    seen: set[int] = set()
    for pick in picks:
        key, value = keys[pick], values[pick]
        if len(inputs) + len(key) + len(value) > config.seq_len:
            break
        start = len(inputs)
        inputs.extend(key + value)
        targets.extend([IGNORE_INDEX] * (len(key) + len(value)))
        if pick in seen:
            for t in range(start + len(key) - 1, start + len(key) + len(value) - 1):
                targets[t] = inputs[t + 1]
        seen.add(pick)
    pad = config.seq_len - len(inputs)
    return [BLANK] * pad + inputs, [IGNORE_INDEX] * pad + targets


def fuzzy_recall_examples(
    config: FuzzyRecallConfig, num: int, generator: torch.Generator, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAD fuzzy in-context recall; see the module docstring."""
    del seed
    rows = [_fuzzy_example(config, generator) for _ in range(num)]
    inputs = torch.tensor([row[0] for row in rows], dtype=torch.long).reshape(num, config.seq_len)
    targets = torch.tensor([row[1] for row in rows], dtype=torch.long).reshape(num, config.seq_len)
    return inputs, targets


def _reproduce_after_marker(
    data: torch.Tensor, tokens: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append MARKER and blanks to `data` (num, D); targets from the marker on are `tokens` (num, n) in order."""
    num, n = tokens.shape
    inputs = torch.full((num, seq_len), BLANK, dtype=torch.long)
    prefix = data.shape[1]
    inputs[:, :prefix] = data
    inputs[:, prefix] = MARKER
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, prefix : prefix + n] = tokens
    return inputs, targets


def selective_copying_examples(
    config: SelectiveCopyingConfig, num: int, generator: torch.Generator, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAD selective copying; see the module docstring."""
    del seed
    n, length = config.num_tokens_to_copy, config.seq_len
    tokens = torch.randint(MARKER + 1, config.vocab_size, (num, n), generator=generator)
    data = torch.full((num, length - n), BLANK, dtype=torch.long)
    data.scatter_(1, sorted_positions(generator, num, length - n, n), tokens)
    return _reproduce_after_marker(data, tokens, length)


def compression_examples(
    config: CompressionConfig, num: int, generator: torch.Generator, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level compression; see the module docstring for how it relates to MAD's."""
    del seed
    n, length = config.seq_len // 2, config.seq_len
    tokens = torch.randint(MARKER + 1, config.vocab_size, (num, n), generator=generator)
    data = torch.cat([torch.full((num, length - 2 * n), BLANK, dtype=torch.long), tokens], dim=1)
    return _reproduce_after_marker(data, tokens, length)


def memorization_map(config: MemorizationConfig, seed: int) -> torch.Tensor:
    """(V // 2,) int64: the value id of each key id, a bijection onto [V // 2, 2 * (V // 2)) fixed by `seed`."""
    num_keys = config.vocab_size // 2
    return num_keys + torch.randperm(num_keys, generator=make_generator(seed, "memorization", "map"))


def memorization_examples(
    config: MemorizationConfig, num: int, generator: torch.Generator, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAD memorization; the map comes from `seed` alone, so train and val share it."""
    kv_map = memorization_map(config, seed)
    keys = torch.randint(0, kv_map.numel(), (num, config.seq_len // 2), generator=generator)
    values = kv_map[keys]
    inputs = torch.stack([keys, values], dim=2).reshape(num, config.seq_len)
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, 0::2] = values
    return inputs, targets
