"""Task configs: the discriminated union, bounds and cross-field rules with messages naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import TypeAdapter, ValidationError

from archspec.data.config import (
    SYNTHETIC_TASKS,
    CompressionConfig,
    DataConfig,
    FuzzyRecallConfig,
    InContextRecallConfig,
    MemorizationConfig,
    MQARConfig,
    NoisyRecallConfig,
    SelectiveCopyingConfig,
    TextConfig,
    TokensConfig,
    parse_data_config,
)

ALL_MODELS = {
    "mqar": MQARConfig,
    "in_context_recall": InContextRecallConfig,
    "noisy_recall": NoisyRecallConfig,
    "fuzzy_recall": FuzzyRecallConfig,
    "selective_copying": SelectiveCopyingConfig,
    "compression": CompressionConfig,
    "memorization": MemorizationConfig,
    "tokens": TokensConfig,
    "text": TextConfig,
}
REQUIRED = {"tokens": {"path": "a.bin", "vocab_size": 50257, "seq_len": 64}, "text": {"path": "a.txt", "seq_len": 64}}


@pytest.mark.parametrize("task", sorted(ALL_MODELS))
def test_task_field_selects_the_model(task: str) -> None:
    config = parse_data_config({"task": task, **REQUIRED.get(task, {})})
    assert type(config) is ALL_MODELS[task]
    assert config.task == task


def test_synthetic_tasks_are_the_generated_ones() -> None:
    assert SYNTHETIC_TASKS == set(ALL_MODELS) - {"tokens", "text"}


def test_unknown_task_is_rejected() -> None:
    with pytest.raises(ValidationError, match="task"):
        parse_data_config({"task": "sorting"})


@pytest.mark.parametrize("task", sorted(ALL_MODELS))
def test_unknown_fields_are_rejected(task: str) -> None:
    with pytest.raises(ValidationError, match="num_kv_pair_count"):
        parse_data_config({"task": task, "num_kv_pair_count": 3, **REQUIRED.get(task, {})})


@pytest.mark.parametrize(
    ("fields", "field_named"),
    [
        ({"task": "mqar", "seq_len": 64, "num_kv_pairs": 17}, "num_kv_pairs"),
        ({"task": "mqar", "vocab_size": 33, "num_kv_pairs": 16}, "vocab_size"),
        ({"task": "mqar", "power_a": 0.0}, "power_a"),
        ({"task": "mqar", "seq_len": 0}, "seq_len"),
        ({"task": "mqar", "num_train": 0}, "num_train"),
        ({"task": "in_context_recall", "seq_len": 127}, "seq_len"),
        ({"task": "noisy_recall", "vocab_size": 17, "noise_vocab_size": 16}, "vocab_size"),
        ({"task": "noisy_recall", "frac_noise": 1.0}, "frac_noise"),
        ({"task": "fuzzy_recall", "vocab_size": 9, "num_kv_pairs": 5}, "num_kv_pairs"),
        ({"task": "fuzzy_recall", "seq_len": 11, "k_motif_size": 3, "v_motif_size": 3}, "seq_len"),
        ({"task": "selective_copying", "seq_len": 31, "num_tokens_to_copy": 16}, "num_tokens_to_copy"),
        ({"task": "compression", "vocab_size": 2}, "vocab_size"),
        ({"task": "memorization", "seq_len": 33}, "seq_len"),
        ({"task": "memorization", "num_val": -1}, "num_val"),
        ({"task": "tokens", "path": "a.bin", "vocab_size": 100, "seq_len": 8, "dtype": "int8"}, "dtype"),
        ({"task": "tokens", "path": "a.bin", "vocab_size": 100, "seq_len": 8, "val_fraction": 0.0}, "val_fraction"),
        ({"task": "tokens", "path": "a.bin", "seq_len": 8}, "vocab_size"),
        ({"task": "text", "path": "a.txt", "seq_len": 8, "vocab_size": 256}, "vocab_size"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(fields: dict, field_named: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_data_config(fields)
    assert field_named in str(error.value)


def test_cross_field_messages_state_the_numbers() -> None:
    with pytest.raises(ValidationError, match=r"num_kv_pairs: 4 \* num_kv_pairs = 68 must be at most seq_len = 64"):
        MQARConfig(seq_len=64, num_kv_pairs=17)


def test_boundary_values_are_accepted() -> None:
    MQARConfig(vocab_size=2 * 16 + 2, seq_len=64, num_kv_pairs=16)
    SelectiveCopyingConfig(seq_len=32, num_tokens_to_copy=16)
    FuzzyRecallConfig(vocab_size=9, num_kv_pairs=4, seq_len=12)


def test_every_field_has_a_description_in_the_json_schema() -> None:
    schema = TypeAdapter(DataConfig).json_schema()
    assert set(schema["discriminator"]["mapping"]) == set(ALL_MODELS)
    for name, model in schema["$defs"].items():
        for field, spec in model["properties"].items():
            if field != "task":
                assert spec.get("description"), f"{name}.{field} has no description"


def test_configs_import_no_torch() -> None:
    code = (
        "import sys; import archspec.data.config; from archspec.data import DataConfig, MQARConfig; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
