"""Multi-query associative recall (MQAR, Arora et al. 2023, "Zoology"), as a pure function of a generator.

Layout of one example (vocab V, seq_len L, N = num_kv_pairs, half = V // 2):
- positions 0 .. 2N-1: the context `k_1 v_1 k_2 v_2 ... k_N v_N`; keys are N distinct ids from [1, half),
  values N distinct ids from [half, V) (disjoint halves of the vocabulary; id 0 is the filler);
- the query region 2N .. L-1 is cut into (L - 2N) // 2 two-token slots; N slots are drawn without replacement
  with p(slot j) proportional to (j + 1) ** (power_a - 1) (small gaps are likelier for power_a < 1), and each
  key is queried once, in random order, as `k_i v_i` in its slot;
- every other query-region position holds a random id from [1, V) (random_non_queries) or 0.
Targets are -100 except at each query key's position, where they are its value. Unlike zoology, the value
also follows the query key in the input, so every target is the next input token (a plain LM sequence).
"""

from __future__ import annotations

import torch

from archspec.data.config import MQARConfig
from archspec.data.sampling import IGNORE_INDEX, distinct_randint


def query_slot_weights(num_slots: int, power_a: float) -> torch.Tensor:
    """(num_slots,) float64 probabilities of the query slots: p(j) ~ (j + 1) ** (power_a - 1), normalised."""
    gaps = torch.arange(1, num_slots + 1, dtype=torch.float64)
    weights = gaps ** (power_a - 1.0)
    return weights / weights.sum()


def mqar_examples(
    config: MQARConfig, num: int, generator: torch.Generator, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`num` MQAR examples: (input_ids, targets), each (num, seq_len) int64. `seed` is unused (uniform signature)."""
    del seed
    n, length, vocab = config.num_kv_pairs, config.seq_len, config.vocab_size
    half = vocab // 2
    keys = distinct_randint(generator, num, 1, half, n)
    values = distinct_randint(generator, num, half, vocab, n)
    if config.random_non_queries:
        inputs = torch.randint(1, vocab, (num, length), generator=generator)
    else:
        inputs = torch.zeros(num, length, dtype=torch.long)
    inputs[:, 0 : 2 * n : 2] = keys
    inputs[:, 1 : 2 * n : 2] = values

    num_slots = (length - 2 * n) // 2
    weights = query_slot_weights(num_slots, config.power_a).expand(num, num_slots)
    slots = torch.multinomial(weights, n, replacement=False, generator=generator)
    order = torch.rand(num, n, generator=generator).argsort(dim=1)
    query_keys, query_values = keys.gather(1, order), values.gather(1, order)
    positions = 2 * n + 2 * slots
    inputs.scatter_(1, positions, query_keys)
    inputs.scatter_(1, positions + 1, query_values)
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets.scatter_(1, positions, query_values)
    return inputs, targets
