"""Synthetic tasks: determinism, bounds, and each task's answers re-derived from its inputs."""

from __future__ import annotations

import pytest
import torch

from archspec.data import generate_examples, make_dataset, task_vocab_size
from archspec.data.config import (
    CompressionConfig,
    FuzzyRecallConfig,
    InContextRecallConfig,
    MemorizationConfig,
    MQARConfig,
    NoisyRecallConfig,
    SelectiveCopyingConfig,
)
from archspec.data.mad import memorization_map

IGNORE = -100

SMALL = {
    "mqar": MQARConfig(vocab_size=64, seq_len=64, num_kv_pairs=8, num_train=48, num_val=24),
    "in_context_recall": InContextRecallConfig(vocab_size=16, seq_len=32, num_train=48, num_val=24),
    "noisy_recall": NoisyRecallConfig(
        vocab_size=24, seq_len=32, noise_vocab_size=8, frac_noise=0.3, num_train=48, num_val=24
    ),
    "fuzzy_recall": FuzzyRecallConfig(vocab_size=16, seq_len=48, num_kv_pairs=4, num_train=48, num_val=24),
    "selective_copying": SelectiveCopyingConfig(
        vocab_size=12, seq_len=40, num_tokens_to_copy=8, num_train=48, num_val=24
    ),
    "compression": CompressionConfig(vocab_size=12, seq_len=21, num_train=48, num_val=24),
    "memorization": MemorizationConfig(vocab_size=32, seq_len=16, num_train=48, num_val=24),
}


def fresh_seed() -> int:
    return int(torch.randint(0, 2**31, ()).item())


@pytest.mark.parametrize("task", sorted(SMALL))
def test_same_arguments_give_identical_tensors(task: str) -> None:
    seed = fresh_seed()
    first = generate_examples(SMALL[task], "train", seed)
    torch.manual_seed(seed + 1)  # global RNG state must not matter
    second = generate_examples(SMALL[task], "train", seed)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("task", sorted(SMALL))
def test_seed_and_split_change_the_examples(task: str) -> None:
    seed = fresh_seed()
    train, _ = generate_examples(SMALL[task], "train", seed)
    other_seed, _ = generate_examples(SMALL[task], "train", seed + 1)
    val, _ = generate_examples(SMALL[task], "val", seed)
    assert not torch.equal(train, other_seed)
    assert not torch.equal(train[: len(val)], val)


@pytest.mark.parametrize("task", sorted(SMALL))
def test_examples_have_the_configured_shape_and_stay_in_the_vocab(task: str) -> None:
    config = SMALL[task]
    for split, count in (("train", config.num_train), ("val", config.num_val)):
        dataset = make_dataset(config, split, fresh_seed())
        assert len(dataset) == count
        item = dataset[count - 1]
        assert set(item) == {"input_ids", "targets"}
        for tensor in item.values():
            assert tensor.dtype == torch.long and tensor.shape == (config.seq_len,)
        inputs, targets = generate_examples(config, split, fresh_seed())
        vocab = task_vocab_size(config)
        assert 0 <= int(inputs.min()) and int(inputs.max()) < vocab
        answers = targets[targets != IGNORE]
        assert answers.numel() > 0
        assert 0 <= int(answers.min()) and int(answers.max()) < vocab


def test_dataset_items_are_rows_of_generate_examples() -> None:
    config, seed = SMALL["mqar"], fresh_seed()
    inputs, targets = generate_examples(config, "val", seed)
    dataset = make_dataset(config, "val", seed)
    for i in (0, 7, config.num_val - 1):
        assert torch.equal(dataset[i]["input_ids"], inputs[i]) and torch.equal(dataset[i]["targets"], targets[i])


def test_generation_spans_several_chunks_deterministically() -> None:
    config = MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4, num_train=2100, num_val=1)
    seed = fresh_seed()
    inputs, _ = generate_examples(config, "train", seed)
    assert inputs.shape == (2100, 32)
    assert torch.equal(inputs, generate_examples(config, "train", seed)[0])
    assert not torch.equal(inputs[:1024], inputs[1024:2048])


def test_bad_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        generate_examples(SMALL["mqar"], "test", 0)


def check_mqar_example(config: MQARConfig, inputs: list[int], targets: list[int]) -> list[int]:
    """Assert MQAR's structure; returns the query-region slot index of each query."""
    n, half = config.num_kv_pairs, config.vocab_size // 2
    keys, values = inputs[0 : 2 * n : 2], inputs[1 : 2 * n : 2]
    assert len(set(keys)) == n and all(1 <= k < half for k in keys)
    assert len(set(values)) == n and all(half <= v < config.vocab_size for v in values)
    value_of = dict(zip(keys, values))
    queries = [p for p, t in enumerate(targets) if t != IGNORE]
    assert len(queries) == n
    assert sorted(inputs[p] for p in queries) == sorted(keys)
    for p in queries:
        assert p >= 2 * n and (p - 2 * n) % 2 == 0
        assert targets[p] == value_of[inputs[p]] == inputs[p + 1]
    if not config.random_non_queries:
        answered = set(queries) | {p + 1 for p in queries}
        assert all(inputs[p] == 0 for p in range(2 * n, config.seq_len) if p not in answered)
    return [(p - 2 * n) // 2 for p in queries]


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_target_is_the_value_that_followed_the_key_in_the_context(random_non_queries: bool) -> None:
    config = MQARConfig(vocab_size=40, seq_len=48, num_kv_pairs=6, random_non_queries=random_non_queries, num_train=64)
    inputs, targets = generate_examples(config, "train", fresh_seed())
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        check_mqar_example(config, row_in, row_t)


def test_mqar_queries_follow_the_power_law_gap_distribution() -> None:
    def mean_slot(power_a: float) -> float:
        config = MQARConfig(vocab_size=64, seq_len=256, num_kv_pairs=4, power_a=power_a, num_train=400)
        inputs, targets = generate_examples(config, "train", fresh_seed())
        slots = [s for i, t in zip(inputs.tolist(), targets.tolist()) for s in check_mqar_example(config, i, t)]
        return sum(slots) / len(slots)

    uniform_mean = (256 - 8) // 2 / 2
    assert abs(mean_slot(1.0) - uniform_mean) < 0.1 * uniform_mean
    assert mean_slot(0.01) < 0.5 * uniform_mean


def check_recall_example(num_keys: int, inputs: list[int], targets: list[int]) -> int:
    """Assert (noisy) in-context recall's structure; returns the number of noise slots."""
    value_of: dict[int, int] = {}
    noise_slots = 0
    for i in range(0, len(inputs), 2):
        key, value = inputs[i], inputs[i + 1]
        assert targets[i + 1] == IGNORE
        if key >= 2 * num_keys:
            assert value >= 2 * num_keys and targets[i] == IGNORE
            noise_slots += 1
            continue
        assert 0 <= key < num_keys <= value < 2 * num_keys
        if key in value_of:
            assert value == value_of[key] and targets[i] == value
        else:
            assert targets[i] == IGNORE
        value_of[key] = value
    return noise_slots


def test_in_context_recall_targets_repeated_keys_with_their_earlier_value() -> None:
    config = SMALL["in_context_recall"]
    inputs, targets = generate_examples(config, "train", fresh_seed())
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        assert check_recall_example(config.vocab_size // 2, row_in, row_t) == 0


def test_noisy_recall_interleaves_noise_slots_at_the_configured_rate() -> None:
    config = NoisyRecallConfig(vocab_size=24, seq_len=64, noise_vocab_size=8, frac_noise=0.3, num_train=200)
    inputs, targets = generate_examples(config, "train", fresh_seed())
    num_keys = (config.vocab_size - config.noise_vocab_size) // 2
    noise = sum(check_recall_example(num_keys, i, t) for i, t in zip(inputs.tolist(), targets.tolist()))
    assert abs(noise / (200 * 32) - 0.3) < 0.03


def check_fuzzy_example(config: FuzzyRecallConfig, inputs: list[int], targets: list[int]) -> None:
    """Parse runs of key / value tokens and rebuild the expected targets from scratch."""
    num_key_tokens = (config.vocab_size - 1) // 2
    is_key = lambda t: 1 <= t <= num_key_tokens  # noqa: E731
    start = next(i for i, t in enumerate(inputs) if t != 0)
    assert all(t == 0 for t in inputs[:start])
    assert start < config.k_motif_size + config.v_motif_size
    expected = [IGNORE] * len(inputs)
    value_of: dict[tuple[int, ...], tuple[int, ...]] = {}
    p = start
    while p < len(inputs):
        k_end = p
        while k_end < len(inputs) and is_key(inputs[k_end]):
            k_end += 1
        v_end = k_end
        while v_end < len(inputs) and num_key_tokens < inputs[v_end] <= 2 * num_key_tokens:
            v_end += 1
        key, value = tuple(inputs[p:k_end]), tuple(inputs[k_end:v_end])
        assert 1 <= len(key) <= config.k_motif_size and 1 <= len(value) <= config.v_motif_size
        if key in value_of:
            assert value_of[key] == value
            for t in range(k_end - 1, v_end - 1):
                expected[t] = inputs[t + 1]
        value_of[key] = value
        p = v_end
    keys = list(value_of)
    assert len(keys) <= config.num_kv_pairs
    for a in keys:
        for b in keys:
            assert a == b or a[: len(b)] != b, f"{b} is a prefix of {a}"
    assert targets == expected


def test_fuzzy_recall_targets_the_whole_value_of_a_repeated_multi_token_key() -> None:
    config = SMALL["fuzzy_recall"]
    inputs, targets = generate_examples(config, "train", fresh_seed())
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        check_fuzzy_example(config, row_in, row_t)


def test_selective_copying_targets_are_the_non_blank_tokens_in_order() -> None:
    config = SMALL["selective_copying"]
    n, length = config.num_tokens_to_copy, config.seq_len
    inputs, targets = generate_examples(config, "train", fresh_seed())
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        marker = row_in.index(1)
        assert marker == length - n
        copied = [t for t in row_in[:marker] if t != 0]
        assert len(copied) == n and all(t >= 2 for t in copied)
        assert row_t[marker:] == copied
        assert row_t[:marker] == [IGNORE] * marker
        assert row_in[marker + 1 :] == [0] * (n - 1)


@pytest.mark.parametrize("seq_len", [20, 21])
def test_compression_reproduces_the_sequence_after_the_marker_from_blanks(seq_len: int) -> None:
    config = CompressionConfig(vocab_size=12, seq_len=seq_len, num_train=32)
    n, pad = seq_len // 2, seq_len % 2
    inputs, targets = generate_examples(config, "train", fresh_seed())
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        tokens = row_in[pad : pad + n]
        assert row_in[:pad] == [0] * pad and all(t >= 2 for t in tokens)
        assert row_in[pad + n] == 1 and row_in[pad + n + 1 :] == [0] * (n - 1)
        assert row_t[pad + n :] == tokens and row_t[: pad + n] == [IGNORE] * (pad + n)


def test_memorization_map_is_shared_by_splits_and_fixed_by_the_seed() -> None:
    config = SMALL["memorization"]
    seed = fresh_seed()
    kv_map = memorization_map(config, seed).tolist()
    num_keys = config.vocab_size // 2
    assert sorted(kv_map) == list(range(num_keys, 2 * num_keys))
    assert kv_map != memorization_map(config, seed + 1).tolist()
    for split in ("train", "val"):
        inputs, targets = generate_examples(config, split, seed)
        for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
            for i in range(0, config.seq_len, 2):
                assert row_in[i + 1] == kv_map[row_in[i]] == row_t[i]
                assert row_t[i + 1] == IGNORE


def test_seed_must_be_an_integer() -> None:
    with pytest.raises(ValueError, match="seed"):
        generate_examples(SMALL["mqar"], "train", 1.5)  # type: ignore[arg-type]
