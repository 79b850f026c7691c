"""`archspec generate RUN_DIR`: text in and out for a byte-level text model, ids for any model; greedy output and
seeded samples are those of LanguageModel.generate on the run's last checkpoint; the folder is only read."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import snapshot, trained_model

from archspec.cli import main
from archspec.data import ByteTokenizer


def generate(capsys, *args: str) -> str:
    """stdout of a successful ``archspec generate`` (stderr must be empty)."""
    assert main(["generate", *args, "--accelerator", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def direct(run, prompt_ids: list[int], new: int, **kwargs) -> list[int]:
    """LanguageModel.generate on the checkpoint loaded the Lightning way."""
    return trained_model(run).generate(torch.tensor([prompt_ids]), new, **kwargs)[0].tolist()


def text_of(ids: list[int], prompt_len: int) -> str:
    """The prompt and the continuation up to its first EOS, BOS and EOS left out."""
    new = ids[prompt_len:]
    new = new[: new.index(257)] if 257 in new else new
    return bytes(i for i in ids[:prompt_len] + new if i < 256).decode("utf-8", errors="replace")


def test_greedy_text_generation_is_model_generate_on_bos_and_the_prompt_bytes(text_run, capsys):
    run, _ = text_run
    out = generate(capsys, str(run), "--prompt", "the quick", "--max-new-tokens", "12")
    prompt = [256, *b"the quick"]  # the text task puts BOS before each document
    expected = direct(run, prompt, 12)
    assert len(expected) == len(prompt) + 12
    assert out == text_of(expected, len(prompt)) + "\n"
    assert out.startswith("the quick")
    assert generate(capsys, str(run), "--prompt", "the quick", "--max-new-tokens", "12") == out  # deterministic


def test_prompt_ids_on_an_mqar_model_print_the_ids_of_model_generate(mqar_run, capsys):
    run, _ = mqar_run
    out = generate(capsys, str(run), "--prompt-ids", "3,17,5,20,3", "--max-new-tokens", "6")
    assert out == ",".join(map(str, direct(run, [3, 17, 5, 20, 3], 6))) + "\n"
    assert out.startswith("3,17,5,20,3,") and len(out.split(",")) == 11


def test_a_seed_makes_sampling_reproducible_and_equal_to_model_generate(text_run, capsys):
    run, _ = text_run
    args = [str(run), "--prompt", "fox", "--max-new-tokens", "24", "--temperature", "1.5", "--top-k", "40"]
    first = generate(capsys, *args, "--seed", "7")
    assert generate(capsys, *args, "--seed", "7") == first
    prompt = [256, *b"fox"]
    assert first == text_of(direct(run, prompt, 24, temperature=1.5, top_k=40, seed=7), len(prompt)) + "\n"
    others = {generate(capsys, *args, "--seed", str(seed)) for seed in (8, 9, 10)}
    assert others - {first}, "other seeds should draw other samples"


def test_going_past_the_trained_context_is_allowed_with_a_note(mqar_run, capsys):
    run, _ = mqar_run
    assert main(["generate", str(run), "--prompt-ids", "1,2,3", "--max-new-tokens", "40", "--accelerator", "cpu"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.split(",")) == 43
    assert captured.err == f"note: 3 prompt + 40 new tokens run past the 32-token context {run} was trained on\n"


@pytest.mark.parametrize("args, message", [
    (["--prompt", "hello"], "--prompt: {run} was trained on the mqar task, whose inputs are token ids, not text; "
                            "give them as --prompt-ids 1,2,3"),
    (["--prompt-ids", "1,2,32"], "--prompt-ids: id 32 (position 2) is outside the vocabulary of {run} (ids 0 to 31)"),
    (["--prompt-ids=-1,2"], "--prompt-ids: id -1 (position 0) is outside the vocabulary of {run} (ids 0 to 31)"),
    (["--prompt-ids", ",".join(["1"] * 33)],
     "--prompt-ids: 33 tokens exceed the 32-token context {run} was trained on (data.seq_len); shorten the prompt"),
], ids=["text-prompt-on-mqar", "id-above-vocab", "negative-id", "too-long"])
def test_prompts_an_mqar_model_cannot_take_exit_2_with_one_line(mqar_run, capsys, args, message):
    run, _ = mqar_run
    before = snapshot(run)
    assert main(["generate", str(run), *args, "--accelerator", "cpu"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"error: {message.format(run=run)}\n")
    assert snapshot(run) == before


def test_a_text_prompt_longer_than_the_context_counts_the_bos(text_run, capsys):
    run, _ = text_run
    assert main(["generate", str(run), "--prompt", "x" * 31, "--max-new-tokens", "1", "--accelerator", "cpu"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "x" * 32, "--accelerator", "cpu"]) == 2
    assert capsys.readouterr().err == (f"error: --prompt: 33 tokens (with BOS) exceed the 32-token context {run} was "
                                       "trained on (data.seq_len); shorten the prompt\n")


def test_prompt_ids_must_be_a_list_of_integers(mqar_run, capsys):
    run, _ = mqar_run
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(run), "--prompt-ids", "1,two"])
    assert exit_info.value.code == 2
    assert "expected comma-separated token ids such as 1,2,3, got '1,two'" in capsys.readouterr().err


def test_a_prompt_is_required_once(mqar_run, capsys):
    run, _ = mqar_run
    for args in ([], ["--prompt", "a", "--prompt-ids", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", str(run), *args])
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_generate_leaves_the_run_folder_byte_identical(text_run, capsys):
    run, _ = text_run
    before = snapshot(run)
    generate(capsys, str(run), "--prompt", "over the", "--max-new-tokens", "8")
    generate(capsys, str(run), "--prompt-ids", "256,116,104", "--temperature", "1", "--max-new-tokens", "4")
    assert snapshot(run) == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "logs", "result.json", "spec.yaml"]


def test_the_byte_tokenizer_round_trips_what_generate_prints():
    tokenizer = ByteTokenizer(add_bos=True)
    assert tokenizer.encode("héllo") == [256, *"héllo".encode()]
    assert tokenizer.decode(tokenizer.encode("héllo")) == "héllo"
